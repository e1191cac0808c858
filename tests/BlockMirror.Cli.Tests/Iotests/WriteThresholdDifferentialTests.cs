using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// block-set-write-threshold and BLOCK_WRITE_THRESHOLD run unchanged on qemu-storage-daemon 7.2 and on
/// <c>blockmirror serve</c> (QEMU's write-threshold unit test and iotest scenarios, driven through NBD exports
/// with qemu-io): the argument checks; one event per threshold, for the first write, write-zeroes or discard
/// that ends past it, with how far past; the threshold then off (0 in query-named-block-nodes); a threshold on
/// a node under another (raw's file, qcow2's file) seeing the requests its parent sends down.
/// </summary>
public sealed class WriteThresholdDifferentialTests
{
    [SkippableFact]
    public async Task The_event_fires_once_per_threshold_past_it_as_qemu_does()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("threshold", async (daemon, dir) =>
        {
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", $"{dir}/a.qcow2", "16M");
            await QemuImages.CreateAsync($"{dir}/w.raw", "1M");
            await QemuImages.CreateAsync($"{dir}/u.raw", "1M", "write -P 1 0 1M");
            var log = new List<string>();
            await daemon.RunAsync(dir,
            [
                "--blockdev", $"driver=file,node-name=af,filename={dir}/a.qcow2", "--blockdev", "driver=qcow2,node-name=a,file=af",
                "--blockdev", $"driver=file,node-name=wf,filename={dir}/w.raw", "--blockdev", "driver=raw,node-name=w,file=wf",
                "--blockdev", $"driver=file,node-name=uf,filename={dir}/u.raw", "--blockdev", "driver=raw,node-name=u,file=uf,discard=unmap",
            ], "a", async (qmp, uri) =>
            {
                async Task SetAsync(JsonObject arguments) =>
                    log.Add($"block-set-write-threshold {arguments.ToJsonString()}: {await JobQmp.ReplyAsync(qmp, "block-set-write-threshold", arguments)}");

                async Task IoAsync(string export, string command)
                {
                    await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", command, uri.Replace("/disk?", $"/{export}?", StringComparison.Ordinal));
                    // The event goes out before the request's reply; a command answered after it follows it.
                    await qmp.ExecuteAsync("query-version");
                    log.Add($"after {export}: {command}: {string.Join(", ", qmp.Events.Where(e => (string?)e["event"] == "BLOCK_WRITE_THRESHOLD").Select(Describe))}");
                    qmp.Events.RemoveAll(e => (string?)e["event"] == "BLOCK_WRITE_THRESHOLD");
                }

                await SetAsync(new() { ["node-name"] = "nope", ["write-threshold"] = 1 });
                await SetAsync(new() { ["node-name"] = "a" });
                await SetAsync(new() { ["write-threshold"] = 1 });
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = "1" });
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = 1.5 });
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = JsonNode.Parse("18446744073709551616") });
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = 1, ["x"] = 1 });
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = -1 });
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = 1 << 20 });
                await SetAsync(new() { ["node-name"] = "af", ["write-threshold"] = 327680 });
                await SetAsync(new() { ["node-name"] = "w", ["write-threshold"] = 64 << 10 });
                await SetAsync(new() { ["node-name"] = "wf", ["write-threshold"] = 128 << 10 });
                await qmp.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "ew", ["node-name"] = "w", ["name"] = "w", ["writable"] = true });

                await IoAsync("disk", "write 512k 4k");
                await IoAsync("disk", "write 1M 512");
                await IoAsync("disk", "write 2M 512");
                await IoAsync("w", "write -z 60k 8k");
                await IoAsync("w", "write 124k 8k");
                await IoAsync("w", "write 256k 4k");
                await SetAsync(new() { ["node-name"] = "w", ["write-threshold"] = 512 << 10 });
                // A discard counts only where discards are passed on (discard=unmap): QEMU drops the others first.
                await IoAsync("w", "discard 600k 4k");
                await qmp.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "eu", ["node-name"] = "u", ["name"] = "u", ["writable"] = true });
                await SetAsync(new() { ["node-name"] = "u", ["write-threshold"] = 512 << 10 });
                await IoAsync("u", "discard 600k 4k");
                await SetAsync(new() { ["node-name"] = "wf", ["write-threshold"] = 900 << 10 });
                await SetAsync(new() { ["node-name"] = "wf", ["write-threshold"] = 0 });
                await IoAsync("w", "write 1000k 4k");
                await SetAsync(new() { ["node-name"] = "a", ["write-threshold"] = 8 << 20 });

                var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
                foreach (var name in new[] { "a", "af", "w", "wf" })
                {
                    log.Add($"{name}: write_threshold {(long)nodes.Single(n => (string?)n!["node-name"] == name)!["write_threshold"]!}");
                }
            });
            return log;
        });

        Assert.Contains("after disk: write 1M 512: BLOCK_WRITE_THRESHOLD a 512 past 1048576", qsd);
        Assert.Contains("after w: discard 600k 4k: ", qsd);
        Assert.Contains("after u: discard 600k 4k: BLOCK_WRITE_THRESHOLD u 94208 past 524288", qsd);
        JobQmp.AssertSame(qsd, ours);
    }

    /// <summary>
    /// The event, with how far past the threshold the request ended; for the qcow2 image's own file without it.
    /// Deliberate difference (README): QEMU writes a new cluster's data together with the zeroes around it in
    /// one request, BlockMirror's qcow2 writes the data alone, so the file sees a shorter request.
    /// </summary>
    static string Describe(JsonObject e)
    {
        var data = e["data"]!;
        var node = (string)data["node-name"]!;
        var amount = node == "af" ? "" : $" {(ulong)data["amount-exceeded"]!}";
        return $"BLOCK_WRITE_THRESHOLD {node}{amount} past {(ulong)data["write-threshold"]!}";
    }
}
