using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A READY mirror's query-block-jobs entry on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: QEMU's
/// members are the same on both, with the same values, and ours (remaining, copy-rate, dirty-rate, converging,
/// eta-seconds) come after them and only on ours: a deliberate difference (README, "Progress").
/// </summary>
public sealed class MirrorProgressFieldDifferentialTests : IDisposable
{
    internal static readonly string[] OurMembers = ["remaining", "copy-rate", "dirty-rate", "converging", "eta-seconds"];

    // Compared by value; busy, len and offset depend on when the job is looked at.
    static readonly string[] SteadyMembers = ["auto-finalize", "io-status", "device", "auto-dismiss", "status", "paused", "speed", "ready", "type"];

    readonly TempDirectory _dir = new("bm-progress-differential-");

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task Qemu_storage_daemon_7_2_has_none_of_our_progress_members_and_ours_keeps_all_of_its()
    {
        var (theirEvents, theirs) = await QueryReadyMirrorAsync(DifferentialDaemon.Qsd());
        var (ourEvents, ours) = await QueryReadyMirrorAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirEvents, ourEvents);
        Assert.Empty(theirs.Select(m => m.Key).Intersect(OurMembers));
        // QEMU 8.2's actively-synced (7.2 lacks it: pinned in the copy-mode differential tests), then ours.
        Assert.Equal([.. theirs.Select(m => m.Key), "actively-synced", .. OurMembers], ours.Select(m => m.Key));
        Assert.Equal(Steady(theirs), Steady(ours));
        Assert.Equal((0L, true, 0L), ((long)ours["remaining"]!, (bool)ours["converging"]!, (long)ours["eta-seconds"]!));
    }

    static IEnumerable<string> Steady(JsonObject job) => SteadyMembers.Select(m => $"{m}={job[m]?.ToJsonString()}");

    async Task<(List<string> Events, JsonObject Job)> QueryReadyMirrorAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        JsonObject? job = null;
        var events = await daemon.RunAsync(dir,
            ["--blockdev", "driver=null-co,node-name=src,size=4194304,read-zeroes=on", "--blockdev", "driver=null-co,node-name=dst,size=4194304,read-zeroes=on"],
            "src", async (qmp, _) =>
            {
                await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "dst", ["sync"] = "full" });
                await qmp.WaitEventAsync("BLOCK_JOB_READY");
                job = Assert.Single((await qmp.ExecuteAsync("query-block-jobs"))!.AsArray())!.AsObject();
                await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m" });
                await DifferentialDaemon.WaitJobGoneAsync(qmp);
            });
        return (events, job!);
    }
}
