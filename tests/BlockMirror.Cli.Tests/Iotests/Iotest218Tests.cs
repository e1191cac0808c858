using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 218, "a mirror block job cancelled in various phases of its existence", run unchanged on
/// qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: the cancel's reply and every event must agree,
/// and must be the ones the iotest expects (CANCELLED before READY whatever force says, COMPLETED for a soft
/// cancel after READY, CANCELLED for a forced one).
/// </summary>
/// <remarks>
/// Where the iotest holds a job before convergence with a null-co source at 64 KiB/s, these read a raw file
/// of data instead: null-co's ranges may be discarded rather than copied, and the speed limit's pacing of
/// those is not what these cases are about. The iotest's quit from a throttle-group node needs the throttle
/// driver, which BlockMirror does not have; the quit case holds the job with a speed limit instead.
/// </remarks>
public sealed class Iotest218Tests
{

    const long Size = 1 << 20;

    /// <summary>iotest 218's start_mirror: a source and a target of 1 MiB, blockdev-mirror job 'mirror', sync=full.</summary>
    static async Task<List<string>> MirrorAsync(DifferentialDaemon daemon, string dir, bool slow, Func<QmpClient, List<string>, Task> script)
    {
        string[] source;
        if (slow)
        {
            await QemuImages.CreateAsync($"{dir}/source.raw", $"{Size}", $"write -P 0x2a 0 {Size}");
            source = JobQmp.DataNode("source", $"{dir}/source.raw");
        }
        else
        {
            source = JobQmp.NullNode("source", Size);
        }

        var log = new List<string>();
        var events = await daemon.RunAsync(dir, [.. source, .. JobQmp.NullNode("target", Size), .. JobQmp.NullNode("exp", Size)], "exp", async (qmp, _) =>
        {
            var mirror = new JsonObject { ["job-id"] = "mirror", ["device"] = "source", ["target"] = "target", ["sync"] = "full" };
            if (slow)
            {
                // Low speed, so that it does not converge.
                mirror["speed"] = 65536;
                mirror["buf-size"] = 65536;
            }

            log.Add($"blockdev-mirror: {await JobQmp.ReplyAsync(qmp, "blockdev-mirror", mirror)}");
            await script(qmp, log);
        });
        log.Add($"events: {string.Join(", ", JobQmp.WithoutQuitDrainPauses(events))}");
        return log;
    }

    static Task<List<string>> CancelAsync(DifferentialDaemon daemon, string dir, bool converged, bool force) =>
        MirrorAsync(daemon, dir, slow: !converged, async (qmp, log) =>
        {
            if (converged)
            {
                await qmp.WaitEventAsync("BLOCK_JOB_READY");
            }

            log.Add($"block-job-cancel force={force}: {await JobQmp.ReplyAsync(qmp, "block-job-cancel", new JsonObject { ["device"] = "mirror", ["force"] = force })}");
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });

    static string[] Expected(bool ready, bool force, string end) =>
    [
        "blockdev-mirror: ok",
        $"block-job-cancel force={force}: ok",
        "events: " + string.Join(", ", (string[])[
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running",
            .. ready ? (string[])["JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY"] : [],
            .. end == "BLOCK_JOB_COMPLETED" ? (string[])["JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending"] : ["JOB_STATUS_CHANGE aborting"],
            end, "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"]),
    ];

    static async Task AssertCancelAsync(bool converged, bool force, string end)
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("iotest218", (daemon, dir) => CancelAsync(daemon, dir, converged, force));
        Assert.Equal(Expected(converged, force, end), qsd);
        JobQmp.AssertSame(qsd, ours);
    }

    /// <summary>iotest 218, "Cancel mirror job before convergence", force=false: still a cancel (CANCELLED).</summary>
    [SkippableFact]
    public Task Cancel_mirror_job_before_convergence_force_false() => AssertCancelAsync(converged: false, force: false, "BLOCK_JOB_CANCELLED");

    /// <summary>iotest 218, "Cancel mirror job before convergence", force=true.</summary>
    [SkippableFact]
    public Task Cancel_mirror_job_before_convergence_force_true() => AssertCancelAsync(converged: false, force: true, "BLOCK_JOB_CANCELLED");

    /// <summary>iotest 218, "Cancel mirror job after convergence", force=false: the job completes (COMPLETED).</summary>
    [SkippableFact]
    public Task Cancel_mirror_job_after_convergence_force_false() => AssertCancelAsync(converged: true, force: false, "BLOCK_JOB_COMPLETED");

    /// <summary>iotest 218, "Cancel mirror job after convergence", force=true: CANCELLED.</summary>
    [SkippableFact]
    public Task Cancel_mirror_job_after_convergence_force_true() => AssertCancelAsync(converged: true, force: true, "BLOCK_JOB_CANCELLED");

    /// <summary>
    /// iotest 218, "Cancel mirror job from throttled node by quitting": quit while the job is held back
    /// returns at once and cancels the job, announcing it, before the daemon exits.
    /// </summary>
    [SkippableFact]
    public async Task Cancel_mirror_job_from_throttled_node_by_quitting()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("iotest218", (daemon, dir) => MirrorAsync(daemon, dir, slow: true, (_, _) => Task.CompletedTask));
        Assert.Equal(
        [
            "blockdev-mirror: ok",
            "events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, BLOCK_EXPORT_DELETED, JOB_STATUS_CHANGE aborting, BLOCK_JOB_CANCELLED, JOB_STATUS_CHANGE concluded, JOB_STATUS_CHANGE null",
        ], qsd);
        JobQmp.AssertSame(qsd, ours);
    }
}
