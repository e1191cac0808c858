using System.Text.Json.Nodes;
using BlockMirror.Jobs;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// Our members of a mirror's query-block-jobs entry (remaining, copy-rate, dirty-rate, converging,
/// eta-seconds) beside QEMU's, which stay as they are. BlockMirror.Cli.Tests pins that qemu-storage-daemon
/// 7.2 has none of them.
/// </summary>
public sealed class MirrorProgressFieldTests
{
    static readonly string[] QemuMembers =
        ["auto-finalize", "io-status", "device", "auto-dismiss", "busy", "len", "offset", "status", "paused", "speed", "ready", "type"];

    static readonly string[] OurMembers = ["remaining", "copy-rate", "dirty-rate", "converging", "eta-seconds"];

    static async Task<DaemonHarness> WithNodesAsync(bool readZeroes)
    {
        var daemon = new DaemonHarness();
        foreach (var name in new[] { "s", "t" })
        {
            await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = name, ["size"] = 4 << 20, ["read-zeroes"] = readZeroes });
        }

        return daemon;
    }

    static async Task<JsonObject> QueryAsync(DaemonHarness daemon) =>
        Assert.Single((await daemon.ExecuteAsync("query-block-jobs"))!.AsArray())!.AsObject();

    [Fact]
    public async Task A_READY_mirror_has_nothing_remaining_and_converges_now()
    {
        await using var daemon = await WithNodesAsync(readZeroes: true);
        await daemon.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "s", ["target"] = "t", ["sync"] = "full" });
        await daemon.WaitStatusAsync("m", JobStatus.Ready);

        var job = await QueryAsync(daemon);
        Assert.Equal([.. QemuMembers, .. OurMembers], job.Select(m => m.Key));
        Assert.Equal(0, (long)job["remaining"]!);
        Assert.True((long)job["copy-rate"]! >= 0);
        Assert.True((long)job["dirty-rate"]! >= 0);
        Assert.True((bool)job["converging"]!);
        Assert.Equal(0, (long)job["eta-seconds"]!);
    }

    [Fact]
    public async Task A_mirror_held_by_its_speed_limit_has_work_remaining_and_no_forecast_of_convergence()
    {
        await using var daemon = await WithNodesAsync(readZeroes: false);
        // One byte per second: the job copies its first buffer and then waits for days.
        await daemon.ExecuteAsync("blockdev-mirror", new JsonObject
        {
            ["job-id"] = "m", ["device"] = "s", ["target"] = "t", ["sync"] = "full", ["speed"] = 1, ["buf-size"] = 1 << 20,
        });
        // Until the job has copied its first buffer, it is still finding what to copy: no forecast at all.
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var job = await QueryAsync(daemon);
        while ((long)job["offset"]! == 0)
        {
            Assert.Null(job["converging"]);
            await Task.Delay(10, limit.Token);
            job = await QueryAsync(daemon);
        }

        Assert.Equal(QemuMembers, job.Select(m => m.Key).Take(QemuMembers.Length));
        Assert.True((long)job["remaining"]! > 0, job.ToJsonString());
        Assert.Equal(0, (long)job["dirty-rate"]!);

        // Unmeasured in its first second, then measured as stalled: never a forecast of convergence.
        Assert.NotEqual(true, (bool?)job["converging"]);
        Assert.Null(job["eta-seconds"]);
        await daemon.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "m", ["force"] = true });
        await daemon.WaitStatusAsync("m", JobStatus.Null);
    }
}
