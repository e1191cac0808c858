using System.Security.Cryptography;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// block_resize shrinking qcow2 nodes, run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>:
/// an image with data, written zeroes and data in the tail (the new end inside a cluster, then grown back), one
/// with an internal snapshot, an overlay over a backing file, and the refusals (an unaligned size; a version 2
/// image with a snapshot, shrinking or growing). The replies, the sizes the nodes report and, after the daemon
/// quits, what qemu-img says of each image (check, the content, the map) must be the same.
/// </summary>
public sealed class Qcow2ShrinkDifferentialTests
{
    const long M = 1 << 20;

    [SkippableFact]
    public async Task Shrinking_qcow2_nodes_answers_and_leaves_the_images_as_qemu_does()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("shrink", async (daemon, dir) =>
        {
            await ImageRecipes.Qcow2Async(dir, "d.qcow2", "8M", [],
                ["write -P 0x11 0 3M", "write -P 0x22 3M 2M", "write -z 5M 512k", "write -P 0x33 6M 1M", "write -P 0x44 8128k 64k"]);
            await ImageRecipes.Qcow2Async(dir, "s.qcow2", "4M", [], ["write -P 0x55 0 4M"]);
            await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "s1", $"{dir}/s.qcow2");
            await ImageRecipes.QemuIoAsync($"{dir}/s.qcow2", "qcow2", ["write -P 0x56 512k 1M"]);
            await ImageRecipes.Qcow2Async(dir, "v2.qcow2", "4M", ["-o", "compat=0.10"], ["write -P 0x66 0 4M"]);
            await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "s1", $"{dir}/v2.qcow2");
            await ImageRecipes.Qcow2Async(dir, "base.qcow2", "4M", [], ["write -P 0x77 0 4M"]);
            await ImageRecipes.Qcow2Async(dir, "o.qcow2", null, ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x78 1M 2M"]);
            string[] images = ["d", "s", "v2", "o"];
            var log = new List<string>();
            await daemon.RunAsync(dir,
            [
                .. images.SelectMany(i => new[]
                {
                    "--blockdev", $"driver=file,node-name={i}f,filename={dir}/{i}.qcow2", "--blockdev", $"driver=qcow2,node-name={i},file={i}f",
                }),
                .. JobQmp.NullNode("exp", M),
            ], "exp", async (qmp, _) =>
            {
                async Task ResizeAsync(string node, long size) =>
                    log.Add($"block_resize {node} {size}: {await JobQmp.ReplyAsync(qmp, "block_resize", new JsonObject { ["node-name"] = node, ["size"] = size })}");

                await ResizeAsync("d", 3 * M + 1000);
                await ResizeAsync("d", 3 * M + 512);
                await ResizeAsync("d", 3 * M + 512);
                await ResizeAsync("d", 8 * M);
                await ResizeAsync("s", M);
                await ResizeAsync("v2", M);
                await ResizeAsync("v2", 8 * M);
                await ResizeAsync("o", 1536 * 1024);

                var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
                foreach (var name in images)
                {
                    log.Add($"{name}: virtual-size {(long)nodes.Single(n => (string?)n!["node-name"] == name)!["image"]!["virtual-size"]!}");
                }
            });

            foreach (var image in images)
            {
                var path = $"{dir}/{image}.qcow2";
                var check = await ExternalTool.RunAsync("qemu-img", ["check", "--output=json", "-f", "qcow2", path]);
                var report = JsonNode.Parse(check.StandardOutput)!.AsObject();
                report.Remove("filename");
                log.Add($"{image} check: exit {check.ExitCode} {report.ToJsonString()}");
                var raw = $"{dir}/{image}.raw";
                await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw);
                log.Add($"{image} content: sha256 {Convert.ToHexString(SHA256.HashData(await File.ReadAllBytesAsync(raw)))}");
                log.Add($"{image} map: {await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "qcow2", path)}");
                log.Add($"{image} snapshots: {string.Join(",", (await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-l", path)).Split('\n').Skip(2).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).ElementAtOrDefault(1)))}");
            }

            return log;
        });

        Assert.Contains($"block_resize d {3 * M + 512}: ok", qsd);
        Assert.Contains($"block_resize d {3 * M + 1000}: GenericError: The new size must be a multiple of 512", qsd);
        Assert.Contains($"block_resize v2 {M}: GenericError: Can't resize a v2 image which has snapshots", qsd);
        Assert.Contains($"block_resize s {M}: ok", qsd);
        JobQmp.AssertSame(qsd, ours);
    }
}
