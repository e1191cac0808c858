using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// An intermediate commit whose read of the middle layer, or write to the base, fails once, under each
/// on-error policy, run unchanged against qemu-storage-daemon 7.2 and <c>blockmirror serve</c>: base.qcow2
/// &lt;- mid.qcow2 &lt;- top.qcow2 made by qemu-img and qemu-io, mid's (or the base's) file under a blkdebug
/// node whose inject-error rule fails the read (write) of one data cluster once. Both daemons must give the
/// same events (the error's operation and action, and the job's end), the same io-status while stopped,
/// and the same base; when the job succeeds the base must hold mid's whole view, the failed chunk included.
/// </summary>
public sealed class ServeCommitErrorDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("bm-commit-error-");

    public void Dispose() => _dir.Dispose();

    /// <summary>The base holds old data everywhere mid has new data, so a chunk the commit skipped would show.</summary>
    static readonly (string Name, string[] Writes)[] Chain =
    [
        ("base.qcow2", ["write -P 0x11 0 4M"]),
        ("mid.qcow2", ["write -P 0x22 0 3M"]),
        ("top.qcow2", ["write -P 0x33 1M 64k"]),
    ];

    /// <summary>A cluster of mid's data in the sixth commit step (of 512 KiB), so some steps have been copied when the error comes.</summary>
    const long FaultGuestOffset = (2 << 20) + (640 << 10);

    /// <summary>
    /// Where each operation's error is injected: reads of mid's file, or writes to the base's file (the base
    /// already has the cluster, so the commit overwrites it in place, at a sector known beforehand).
    /// </summary>
    static readonly Dictionary<string, (string Layer, string Event)> Faults = new()
    {
        ["read"] = ("mid", "read_aio"),
        ["write"] = ("base", "write_aio"),
    };

    /// <summary>
    /// How much of the file blockmirror's qcow2 driver reads at open, to find the header before it knows
    /// the cluster size (up to the largest cluster, 2 MiB).
    /// </summary>
    const long HeaderReadLength = 2 << 20;

    [SkippableTheory]
    [InlineData("read", "ignore", 5, "ignore", null)]
    [InlineData("read", "ignore", 28, "ignore", null)]
    [InlineData("read", "report", 5, "report", null)]
    [InlineData("read", "stop", 5, "stop", "failed")]
    [InlineData("read", "stop", 28, "stop", "nospace")]
    [InlineData("read", "enospc", 28, "stop", "nospace")]
    [InlineData("read", "enospc", 5, "report", null)]
    [InlineData("read", "auto", 28, "stop", "nospace")]
    [InlineData("read", "auto", 5, "report", null)]
    [InlineData("write", "ignore", 5, "ignore", null)]
    [InlineData("write", "ignore", 28, "ignore", null)]
    [InlineData("write", "report", 5, "report", null)]
    [InlineData("write", "stop", 5, "stop", "failed")]
    [InlineData("write", "stop", 28, "stop", "nospace")]
    [InlineData("write", "enospc", 28, "stop", "nospace")]
    [InlineData("write", "enospc", 5, "report", null)]
    [InlineData("write", "auto", 28, "stop", "nospace")]
    [InlineData("write", "auto", 5, "report", null)]
    public async Task An_error_once_in_an_intermediate_commit_ends_the_same_on_both_daemons(string operation, string policy, int errno, string action, string? stoppedIoStatus)
    {
        DifferentialDaemon[] daemons = [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];
        var events = new List<string>[daemons.Length];
        var ioStatus = new string?[daemons.Length];
        string[] dirs = [.. daemons.Select(d => Path.Combine(_dir.Path, d.Name))];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = dirs[i];
            var fault = Faults[operation];
            var sector = await MakeChainAsync(dir, fault.Layer);
            events[i] = await daemons[i].RunAsync(dir, Blockdevs(dir, fault, sector, errno), "top", async (qmp, _) =>
            {
                await qmp.ExecuteAsync("block-commit", new JsonObject
                {
                    ["job-id"] = "job0", ["device"] = "top", ["top-node"] = "mid", ["base-node"] = "base", ["on-error"] = policy,
                });
                if (stoppedIoStatus is not null)
                {
                    await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "paused");
                    var job = (await qmp.ExecuteAsync("query-block-jobs"))!.AsArray().Single()!;
                    ioStatus[i] = (string?)job["io-status"];
                    await qmp.ExecuteAsync("block-job-resume", new JsonObject { ["device"] = "job0" });
                }

                await DifferentialDaemon.WaitJobGoneAsync(qmp);
            });

            var check = await ExternalTool.RunCheckedAsync("qemu-img", "check", $"{dir}/base.qcow2");
            Assert.Contains("No errors were found on the image.", check);
        }

        var error = $"BLOCK_JOB_ERROR {operation} {action}";
        string[] expected = action switch
        {
            "report" =>
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", error, "JOB_STATUS_CHANGE aborting",
                $"BLOCK_JOB_COMPLETED error: {(errno == 28 ? "No space left on device" : "Input/output error")}",
                "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
            ],
            _ =>
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", error,
                .. action == "stop" ? (string[])["JOB_STATUS_CHANGE paused", "JOB_STATUS_CHANGE running"] : [],
                "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED",
                "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
            ],
        };
        Assert.Equal(expected, events[0]);
        Assert.Equal(events[0], events[1]);
        Assert.Equal((stoppedIoStatus, stoppedIoStatus), (ioStatus[0], ioStatus[1]));

        if (action != "report")
        {
            foreach (var dir in dirs)
            {
                await QemuImages.AssertIdenticalAsync($"{dir}/expected.raw", $"{dir}/base.qcow2", actualFormat: "qcow2");
            }
        }

        // A failed commit has copied the steps before the error on both daemons, and nothing after.
        await QemuImages.AssertIdenticalAsync($"{dirs[0]}/base.qcow2", $"{dirs[1]}/base.qcow2", "qcow2", "qcow2");
    }

    /// <summary>
    /// Each layer as its own node, the faulty layer's file under blkdebug. The rule names the sector where
    /// that layer keeps the faulty cluster. Both daemons arm a read_aio (write_aio) rule at the first data read
    /// (write) of the qcow2 driver above and then fail the next request of any kind that covers the sector;
    /// naming the sector keeps the table reads and writes out of it. The sector also lies past the header read
    /// of blockmirror's qcow2 open (<see cref="HeaderReadLength"/>).
    /// </summary>
    static string[] Blockdevs(string dir, (string Layer, string Event) fault, long sector, int errno) =>
    [
        .. Layer(dir, "base", null, fault, sector, errno),
        .. Layer(dir, "mid", "base", fault, sector, errno),
        .. Layer(dir, "top", "mid", fault, sector, errno),
    ];

    /// <summary>One layer: its file node, blkdebug above the file when the fault is in this layer, and the qcow2 node.</summary>
    static string[] Layer(string dir, string name, string? backing, (string Layer, string Event) fault, long sector, int errno)
    {
        string[] file = ["--blockdev", $"driver=file,node-name={name}-file,filename={dir}/{name}.qcow2"];
        var qcow2 = $"driver=qcow2,node-name={name},file={name}{(fault.Layer == name ? "-debug" : "-file")}{(backing is null ? "" : $",backing={backing}")}";
        if (fault.Layer != name)
        {
            return [.. file, "--blockdev", qcow2];
        }

        var blkdebug = new JsonObject
        {
            ["driver"] = "blkdebug", ["node-name"] = $"{name}-debug", ["image"] = $"{name}-file",
            ["inject-error"] = new JsonArray(new JsonObject { ["event"] = fault.Event, ["errno"] = errno, ["sector"] = sector, ["once"] = true }),
        };
        return [.. file, "--blockdev", blkdebug.ToJsonString(), "--blockdev", qcow2];
    }

    /// <summary>Makes the chain and expected.raw (mid's view: what the base must hold after the commit); returns the faulty sector of the layer's file.</summary>
    static async Task<long> MakeChainAsync(string dir, string faultLayer)
    {
        Directory.CreateDirectory(dir);
        for (var level = 0; level < Chain.Length; level++)
        {
            string[] backing = level == 0 ? [] : ["-b", Chain[level - 1].Name, "-F", "qcow2"];
            await ImageRecipes.Qcow2Async(dir, Chain[level].Name, "4M", backing, Chain[level].Writes);
        }

        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", $"{dir}/mid.qcow2", $"{dir}/expected.raw");
        var host = await HostOffsetAsync($"{dir}/{faultLayer}.qcow2", FaultGuestOffset);
        Assert.True(host >= HeaderReadLength, $"{faultLayer} keeps the faulty cluster at {host}, inside the header read at open");
        return host / 512;
    }

    /// <summary>Where the image itself (not its backing) keeps the byte at <paramref name="guestOffset"/>, by qemu-img map.</summary>
    static async Task<long> HostOffsetAsync(string image, long guestOffset)
    {
        using var map = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "qcow2", image));
        var extent = map.RootElement.EnumerateArray().Single(e =>
            e.GetProperty("start").GetInt64() <= guestOffset && guestOffset < e.GetProperty("start").GetInt64() + e.GetProperty("length").GetInt64());
        Assert.True(extent.GetProperty("depth").GetInt32() == 0 && extent.TryGetProperty("offset", out _), $"{image} does not hold {guestOffset} itself: {extent}");
        return extent.GetProperty("offset").GetInt64() + guestOffset - extent.GetProperty("start").GetInt64();
    }
}
