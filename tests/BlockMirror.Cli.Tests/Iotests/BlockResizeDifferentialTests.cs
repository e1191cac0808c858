using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// block_resize run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c> (as iotests 025/055
/// and the block_resize cases of 041 drive it): growing a qcow2 and a raw image, shrinking a raw one and a qcow2, every
/// refusal QEMU has (lookup, a negative or unaligned or huge size, a read-only node, a node whose parent
/// does not share resizing, a node a block job works on, an exported node), in QEMU's words. The replies and
/// the sizes the nodes report must be the same.
/// </summary>
public sealed class BlockResizeDifferentialTests
{
    const long M = 1 << 20;

    [SkippableFact]
    public async Task Resizes_and_refusals_answer_as_qemu_does()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("resize", async (daemon, dir) =>
        {
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", $"{dir}/a.qcow2", "16M");
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", $"{dir}/t.qcow2", "48M");
            await QemuImages.CreateAsync($"{dir}/r.raw", "1M");
            await QemuImages.CreateAsync($"{dir}/w.raw", "1M", "write -P 0x5a 0 1M");
            var log = new List<string>();
            await daemon.RunAsync(dir,
            [
                "--blockdev", $"driver=file,node-name=af,filename={dir}/a.qcow2", "--blockdev", "driver=qcow2,node-name=a,file=af",
                "--blockdev", $"driver=file,node-name=tf,filename={dir}/t.qcow2", "--blockdev", "driver=qcow2,node-name=t,file=tf",
                "--blockdev", $"driver=file,node-name=r,filename={dir}/r.raw,read-only=on",
                "--blockdev", $"driver=file,node-name=wf,filename={dir}/w.raw", "--blockdev", "driver=raw,node-name=w,file=wf",
                .. JobQmp.NullNode("exp", M),
            ], "exp", async (qmp, _) =>
            {
                async Task ResizeAsync(JsonObject arguments) =>
                    log.Add($"block_resize {arguments.ToJsonString()}: {await JobQmp.ReplyAsync(qmp, "block_resize", arguments)}");

                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 32 * M });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 32 * M });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 1000 });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = -1 });
                await ResizeAsync(new() { ["node-name"] = "af", ["size"] = 16 * M });
                await ResizeAsync(new() { ["device"] = "a", ["size"] = 16 * M });
                await ResizeAsync(new() { ["node-name"] = "nope", ["size"] = 16 * M });
                await ResizeAsync(new() { ["size"] = 16 * M });
                await ResizeAsync(new() { ["node-name"] = "a" });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = "1M" });
                await ResizeAsync(new() { ["node-name"] = "a", ["device"] = "a", ["size"] = 48 * M });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 48 * M, ["x"] = 1 });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = long.MaxValue });
                await ResizeAsync(new() { ["node-name"] = "r", ["size"] = 2 * M });
                await ResizeAsync(new() { ["node-name"] = "w", ["size"] = 2 * M });
                await ResizeAsync(new() { ["node-name"] = "w", ["size"] = M / 2 });
                await ResizeAsync(new() { ["node-name"] = "w", ["size"] = M / 2 + 1000 });
                await ResizeAsync(new() { ["node-name"] = "wf", ["size"] = 3 * M });

                // A mirror's source and target (as long as the source by now) are the job's (QEMU's op blockers); the
                // target's file is its qcow2's.
                await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "j", ["device"] = "a", ["target"] = "t", ["sync"] = "full", ["speed"] = 65536 });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 64 * M });
                await ResizeAsync(new() { ["node-name"] = "t", ["size"] = 64 * M });
                await ResizeAsync(new() { ["node-name"] = "t", ["device"] = "dev", ["size"] = 64 * M });
                await ResizeAsync(new() { ["node-name"] = "tf", ["size"] = 64 * M });
                await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "j", ["force"] = true });
                await DifferentialDaemon.WaitJobGoneAsync(qmp);

                // An NBD export told its clients the size: it shares no resize, read-only or not.
                await qmp.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "e", ["node-name"] = "a", ["name"] = "a" });
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 64 * M });
                await qmp.ExecuteAsync("block-export-del", new JsonObject { ["id"] = "e" });
                await qmp.WaitEventAsync("BLOCK_EXPORT_DELETED", e => (string?)e["data"]!["id"] == "e");
                await ResizeAsync(new() { ["node-name"] = "a", ["size"] = 64 * M });

                var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
                foreach (var name in new[] { "a", "w", "wf", "r" })
                {
                    var node = nodes.Single(n => (string?)n!["node-name"] == name)!;
                    log.Add($"{name}: virtual-size {(long)node["image"]!["virtual-size"]!}");
                }

                // A qcow2 shrinks (Qcow2ShrinkDifferentialTests compares the images left).
                log.Add($"shrink a: {await JobQmp.ReplyAsync(qmp, "block_resize", new JsonObject { ["node-name"] = "a", ["size"] = 16 * M })}");
            });

            // What the raw image holds after growing and shrinking: its first half kept, nothing past it.
            log.Add($"w.raw: {new FileInfo($"{dir}/w.raw").Length} bytes");
            await QemuImages.CreateAsync($"{dir}/expected.raw", $"{M / 2 + 1000}", $"write -P 0x5a 0 {M / 2}");
            await QemuImages.AssertIdenticalAsync($"{dir}/expected.raw", $"{dir}/w.raw");
            var check = await ExternalTool.RunAsync("qemu-img", ["check", $"{dir}/a.qcow2"]);
            log.Add($"qemu-img check a.qcow2: exit {check.ExitCode}");
            return log;
        });

        Assert.Contains("block_resize {\"node-name\":\"a\",\"size\":-1}: GenericError: Parameter 'size' expects a >0 size", qsd);
        Assert.Contains("block_resize {\"node-name\":\"a\",\"size\":67108864}: GenericError: Device '(null)' is in use", qsd);
        Assert.Contains("a: virtual-size 67108864", qsd);
        JobQmp.AssertSame(qsd, ours);
    }

    /// <summary>
    /// Growing a qcow2 over a backing file longer than it (an overlay made short, or shrunk): the new part reads as
    /// zeroes, not as the backing file's data (QEMU zeroes it: explicit zeroes to the end of the cluster the old end
    /// falls in, zero clusters past it); a version 2 overlay, which has no zero clusters, refuses to grow at all.
    /// </summary>
    [SkippableFact]
    public async Task Growing_over_a_longer_backing_file_hides_it_as_qemu_does()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("resize-backing", async (daemon, dir) =>
        {
            await QemuImages.CreateAsync($"{dir}/base.raw", "4M", "write -P 0x77 0 4M");
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.raw", "-F", "raw", $"{dir}/v3.qcow2", $"{M + 512}");
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", $"{dir}/v2.qcow2", $"{M}");
            var log = new List<string>();
            await daemon.RunAsync(dir,
            [
                "--blockdev", $"driver=file,node-name=bf,filename={dir}/base.raw,read-only=on",
                "--blockdev", "driver=raw,node-name=b,file=bf,read-only=on",
                "--blockdev", $"driver=file,node-name=v3f,filename={dir}/v3.qcow2", "--blockdev", "driver=qcow2,node-name=v3,file=v3f,backing=b",
                "--blockdev", $"driver=file,node-name=v2f,filename={dir}/v2.qcow2", "--blockdev", "driver=qcow2,node-name=v2,file=v2f,backing=b",
                .. JobQmp.NullNode("exp", M),
            ], "exp", async (qmp, _) =>
            {
                foreach (var node in new[] { "v3", "v2" })
                {
                    log.Add($"grow {node}: {await JobQmp.ReplyAsync(qmp, "block_resize", new JsonObject { ["node-name"] = node, ["size"] = 3 * M })}");
                }

                var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
                foreach (var name in new[] { "v3", "v2" })
                {
                    var node = nodes.Single(n => (string?)n!["node-name"] == name)!;
                    log.Add($"{name}: virtual-size {(long)node["image"]!["virtual-size"]!}");
                }
            });

            foreach (var image in new[] { "v3", "v2" })
            {
                var check = await ExternalTool.RunAsync("qemu-img", ["check", $"{dir}/{image}.qcow2"]);
                log.Add($"qemu-img check {image}: exit {check.ExitCode}");
                log.Add($"{image} map: {await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", $"{dir}/{image}.qcow2")}");
            }

            // The first MiB and 512 bytes still read from the backing file; the grown part reads zeroes.
            var read = await ExternalTool.RunAsync("qemu-io", ["-f", "qcow2", "-c", $"read -P 0x77 0 {M + 512}", "-c", $"read -P 0 {M + 512} {(2 * M) - 512}", $"{dir}/v3.qcow2"]);
            log.Add($"v3 reads: {(read.StandardOutput.Contains("Pattern verification failed") ? "pattern verification failed" : "as expected")}, exit {read.ExitCode}");
            return log;
        });

        Assert.Contains("grow v2: GenericError: Failed to zero out new clusters: Operation not supported", qsd);
        Assert.Contains("v3 reads: as expected, exit 0", qsd);
        JobQmp.AssertSame(qsd, ours);
    }
}
