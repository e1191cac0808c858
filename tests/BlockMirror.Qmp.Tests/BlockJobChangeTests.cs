using System.Text.Json.Nodes;
using BlockMirror.Jobs;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// copy-mode on blockdev-mirror and drive-mirror, block-job-change (QEMU 8.2) with QEMU's errors and our
/// way back to background, and actively-synced in query-block-jobs.
/// </summary>
public sealed class BlockJobChangeTests
{
    static async Task<DaemonHarness> WithNullNodesAsync(params string[] names)
    {
        var daemon = new DaemonHarness();
        foreach (var name in names)
        {
            await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = name, ["size"] = 1 << 20 });
        }

        return daemon;
    }

    static async Task StartReadyAsync(DaemonHarness daemon, string copyMode)
    {
        await daemon.ExecuteAsync("blockdev-mirror", new JsonObject
        {
            ["job-id"] = "m", ["device"] = "s", ["target"] = "t", ["sync"] = "full", ["copy-mode"] = copyMode,
        });
        await daemon.WaitStatusAsync("m", JobStatus.Ready);
    }

    static async Task<JsonObject> QueryAsync(DaemonHarness daemon) =>
        (JsonObject)((JsonArray)(await daemon.ExecuteAsync("query-block-jobs"))!).Single()!;

    static async Task WaitActivelySyncedAsync(DaemonHarness daemon, bool expected)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while ((bool)(await QueryAsync(daemon))["actively-synced"]! != expected)
        {
            Assert.False(cts.IsCancellationRequested, $"actively-synced never became {expected}");
            await Task.Delay(1, CancellationToken.None);
        }
    }

    static JsonObject Change(string copyMode, string id = "m", string type = "mirror") =>
        new() { ["id"] = id, ["type"] = type, ["copy-mode"] = copyMode };

    [Fact]
    public async Task A_write_blocking_mirror_becomes_actively_synced_and_a_change_to_background_ends_it()
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        await StartReadyAsync(daemon, "write-blocking");
        await WaitActivelySyncedAsync(daemon, true);

        await daemon.ExecuteAsync("block-job-change", Change("background"));
        Assert.False((bool)(await QueryAsync(daemon))["actively-synced"]!);

        await daemon.ExecuteAsync("block-job-change", Change("write-blocking"));
        await WaitActivelySyncedAsync(daemon, true);
    }

    [Fact]
    public async Task A_background_mirror_is_never_actively_synced_until_changed()
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        await StartReadyAsync(daemon, "background");
        Assert.False((bool)(await QueryAsync(daemon))["actively-synced"]!);

        // The mode it has: nothing to do, no error (QEMU's mirror_change).
        await daemon.ExecuteAsync("block-job-change", Change("background"));
        await daemon.ExecuteAsync("block-job-change", Change("write-blocking"));
        await WaitActivelySyncedAsync(daemon, true);
    }

    [Fact]
    public async Task Block_job_change_refuses_as_QEMU_does()
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        await StartReadyAsync(daemon, "background");

        Assert.Equal("Block job 'nope' not found", await daemon.ErrorAsync("block-job-change", Change("write-blocking", id: "nope")));
        Assert.Equal("Parameter 'copy-mode' is missing", await daemon.ErrorAsync("block-job-change", new JsonObject { ["id"] = "m", ["type"] = "mirror" }));
        Assert.Equal("Parameter 'type' is missing", await daemon.ErrorAsync("block-job-change", new JsonObject { ["id"] = "m" }));
        Assert.Equal("Parameter 'copy-mode' does not accept value 'fast'", await daemon.ErrorAsync("block-job-change", Change("fast")));
        Assert.Equal("Parameter 'type' does not accept value 'mirr'", await daemon.ErrorAsync("block-job-change", Change("background", type: "mirr")));
        Assert.Equal("Job 'm' is 'mirror' job, not 'commit'",
            await daemon.ErrorAsync("block-job-change", new JsonObject { ["id"] = "m", ["type"] = "commit" }));
        Assert.Equal("Parameter 'copy-mode' is unexpected",
            await daemon.ErrorAsync("block-job-change", new JsonObject { ["id"] = "m", ["type"] = "commit", ["copy-mode"] = "background" }));
        Assert.False((bool)(await QueryAsync(daemon))["actively-synced"]!);
    }

    [Fact]
    public async Task Blockdev_mirror_takes_the_copy_mode_and_refuses_an_unknown_one()
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        Assert.Equal("Parameter 'copy-mode' does not accept value 'sync'", await daemon.ErrorAsync("blockdev-mirror", new JsonObject
        {
            ["job-id"] = "m", ["device"] = "s", ["target"] = "t", ["sync"] = "full", ["copy-mode"] = "sync",
        }));
        Assert.Empty(daemon.Daemon.Jobs.Jobs);

        await StartReadyAsync(daemon, "__org.blockmirror_adaptive");
        var job = (BlockMirror.Jobs.Mirror.MirrorJob)daemon.Daemon.Jobs.Get("m");
        Assert.Equal(BlockMirror.Jobs.Mirror.MirrorCopyMode.Adaptive, job.CopyMode);
    }
}
