using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 185, "exiting qemu while jobs are still running", run unchanged on qemu-storage-daemon 7.2
/// and on <c>blockmirror serve</c>: quit cancels every job and announces it (aborting, BLOCK_JOB_CANCELLED,
/// concluded, null) before the daemon exits, and leaves every image consistent, with the guest's data and
/// the backing chain as they were.
/// </summary>
/// <remarks>
/// The chain is the iotest's, base (64 MiB), mid, top, built with qemu-img and qemu-io rather than
/// blockdev-snapshot-sync, except that mid holds 20 MiB of data rather than 4: a mirror (active commit too)
/// copies up to 16 MiB before its first sleep, and with 4 MiB whether READY comes before quit depends on
/// how fast those requests complete. The mirrors copy 64 KiB a second (buf-size 64 KiB) for the same reason.
/// The iotest also compares the jobs' offsets, which depend on how far each got before quit; these compare
/// what does not. The iotest's jobs take their device's name for an id; qemu-storage-daemon's nodes have
/// none (a job without job-id is refused), so these name theirs. Its backup and stream cases need jobs
/// BlockMirror does not have. The cases after the iotest's own hold a job paused, pending or concluded at quit.
/// </remarks>
public sealed class Iotest185Tests
{

    const string Cancelled = "JOB_STATUS_CHANGE aborting, BLOCK_JOB_CANCELLED, JOB_STATUS_CHANGE concluded, JOB_STATUS_CHANGE null";

    /// <summary>Builds the chain, opens top, runs the script (which starts a job), quits; then checks the images.</summary>
    static async Task<List<string>> QuitWithJobAsync(DifferentialDaemon daemon, string dir, Func<QmpClient, List<string>, Task> script, bool sigterm = false)
    {
        await ImageRecipes.Qcow2Async(dir, "base.qcow2", "64M", [], []);
        await ImageRecipes.Qcow2Async(dir, "mid.qcow2", null, ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x85 0 20M"]);
        await ImageRecipes.Qcow2Async(dir, "top.qcow2", null, ["-b", "mid.qcow2", "-F", "qcow2"], []);
        var log = new List<string>();
        var events = await daemon.RunAsync(dir,
            ["--blockdev", $"driver=qcow2,node-name=disk,file.driver=file,file.filename={dir}/top.qcow2", .. JobQmp.NullNode("exp", 1 << 20)], "exp",
            (qmp, _) => script(qmp, log), sigterm: sigterm);
        log.Add($"events: {string.Join(", ", JobQmp.WithoutQuitDrainPauses(events))}");

        // Whatever the job had done, the guest reads what it wrote, through an unchanged chain.
        foreach (var image in new[] { "base", "mid", "top" })
        {
            Assert.Contains("No errors were found on the image.", await ExternalTool.RunCheckedAsync("qemu-img", "check", $"{dir}/{image}.qcow2"));
        }

        var chain = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--backing-chain", $"{dir}/top.qcow2");
        Assert.Contains("backing file: mid.qcow2", chain);
        Assert.Contains("backing file: base.qcow2", chain);
        await ImageRecipes.QemuIoAsync($"{dir}/top.qcow2", "qcow2", ["read -P 0x85 0 20M", "read -P 0 20M 44M"]);

        // A mirror's copy, complete or not, is a consistent image.
        if (File.Exists($"{dir}/copy.qcow2"))
        {
            Assert.Contains("No errors were found on the image.", await ExternalTool.RunCheckedAsync("qemu-img", "check", $"{dir}/copy.qcow2"));
        }

        return log;
    }

    static async Task StartAsync(QmpClient qmp, List<string> log, string command, JsonObject arguments) =>
        log.Add($"{command}: {await JobQmp.ReplyAsync(qmp, command, arguments)}");

    static async Task AssertAgreeAsync(string[] expected, Func<QmpClient, List<string>, string, Task> script)
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("iotest185", (daemon, dir) => QuitWithJobAsync(daemon, dir, (qmp, log) => script(qmp, log, dir)));
        Assert.Equal(string.Join('\n', expected), string.Join('\n', qsd));
        JobQmp.AssertSame(qsd, ours);
    }

    /// <summary>iotest 185, "Start commit job and exit qemu": mid into base at 64 KiB/s.</summary>
    [SkippableFact]
    public Task Start_commit_job_and_exit_qemu() => AssertAgreeAsync(
        ["block-commit: ok", $"events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, BLOCK_EXPORT_DELETED, {Cancelled}"],
        (qmp, log, dir) => StartAsync(qmp, log, "block-commit", new JsonObject
        {
            ["job-id"] = "disk", ["device"] = "disk", ["top"] = $"{dir}/mid.qcow2", ["base"] = $"{dir}/base.qcow2", ["speed"] = 65536,
        }));

    /// <summary>iotest 185, "Start active commit job and exit qemu": top into base at 64 KiB/s.</summary>
    [SkippableFact]
    public Task Start_active_commit_job_and_exit_qemu() => AssertAgreeAsync(
        ["block-commit: ok", $"events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, BLOCK_EXPORT_DELETED, {Cancelled}"],
        (qmp, log, dir) => StartAsync(qmp, log, "block-commit", new JsonObject
        {
            ["job-id"] = "disk", ["device"] = "disk", ["base"] = $"{dir}/base.qcow2", ["speed"] = 65536,
        }));

    /// <summary>iotest 185, "Start mirror job and exit qemu": drive-mirror to a new qcow2 at 64 KiB/s; the copy is left consistent.</summary>
    [SkippableFact]
    public Task Start_mirror_job_and_exit_qemu() => AssertAgreeAsync(
        ["drive-mirror: ok", $"events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, BLOCK_EXPORT_DELETED, {Cancelled}"],
        async (qmp, log, dir) =>
        {
            await StartAsync(qmp, log, "drive-mirror", new JsonObject
            {
                ["job-id"] = "disk", ["device"] = "disk", ["target"] = $"{dir}/copy.qcow2", ["format"] = "qcow2", ["sync"] = "full", ["speed"] = 65536, ["buf-size"] = 65536,
            });
        });

    /// <summary>Beyond iotest 185: a user-paused mirror at quit is resumed to be cancelled (running, then aborting).</summary>
    [SkippableFact]
    public Task Paused_mirror_job_and_exit_qemu() => AssertAgreeAsync(
        ["drive-mirror: ok", "block-job-pause: ok",
         $"events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, JOB_STATUS_CHANGE paused, BLOCK_EXPORT_DELETED, JOB_STATUS_CHANGE running, {Cancelled}"],
        async (qmp, log, dir) =>
        {
            await StartAsync(qmp, log, "drive-mirror", new JsonObject
            {
                ["job-id"] = "disk", ["device"] = "disk", ["target"] = $"{dir}/copy.qcow2", ["format"] = "qcow2", ["sync"] = "full", ["speed"] = 65536, ["buf-size"] = 65536,
            });
            await StartAsync(qmp, log, "block-job-pause", new JsonObject { ["device"] = "disk" });
            await JobQmp.WaitStatusAsync(qmp, "disk", "paused");
        });

    /// <summary>Beyond iotest 185: paused, resumed, then quit: cancelled as a running job.</summary>
    [SkippableFact]
    public Task Paused_and_resumed_mirror_job_and_exit_qemu() => AssertAgreeAsync(
        ["drive-mirror: ok", "block-job-pause: ok", "block-job-resume: ok",
         $"events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, JOB_STATUS_CHANGE paused, JOB_STATUS_CHANGE running, BLOCK_EXPORT_DELETED, {Cancelled}"],
        async (qmp, log, dir) =>
        {
            await StartAsync(qmp, log, "drive-mirror", new JsonObject
            {
                ["job-id"] = "disk", ["device"] = "disk", ["target"] = $"{dir}/copy.qcow2", ["format"] = "qcow2", ["sync"] = "full", ["speed"] = 65536, ["buf-size"] = 65536,
            });
            await StartAsync(qmp, log, "block-job-pause", new JsonObject { ["device"] = "disk" });
            await JobQmp.WaitStatusAsync(qmp, "disk", "paused");
            await StartAsync(qmp, log, "block-job-resume", new JsonObject { ["device"] = "disk" });
            await JobQmp.WaitStatusAsync(qmp, "disk", "running");
        });

    /// <summary>Beyond iotest 185: a job waiting for job-finalize at quit is aborted (the target is not switched to).</summary>
    [SkippableFact]
    public Task Pending_mirror_job_and_exit_qemu() => AssertAgreeAsync(
        ["drive-mirror: ok", "job-complete: ok",
         "events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, JOB_STATUS_CHANGE ready, BLOCK_JOB_READY, JOB_STATUS_CHANGE waiting, JOB_STATUS_CHANGE pending, BLOCK_JOB_PENDING, " +
         $"BLOCK_EXPORT_DELETED, {Cancelled}"],
        async (qmp, log, dir) =>
        {
            await StartAsync(qmp, log, "drive-mirror", new JsonObject
            {
                ["job-id"] = "disk", ["device"] = "disk", ["target"] = $"{dir}/copy.qcow2", ["format"] = "qcow2", ["sync"] = "full", ["auto-finalize"] = false,
            });
            await JobQmp.WaitStatusAsync(qmp, "disk", "ready");
            await StartAsync(qmp, log, "job-complete", new JsonObject { ["id"] = "disk" });
            await JobQmp.WaitStatusAsync(qmp, "disk", "pending");
        });

    /// <summary>Beyond iotest 185: a concluded job nobody dismissed is dismissed at quit (null).</summary>
    [SkippableFact]
    public Task Concluded_mirror_job_and_exit_qemu() => AssertAgreeAsync(
        ["drive-mirror: ok", "job-complete: ok",
         "events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, JOB_STATUS_CHANGE ready, BLOCK_JOB_READY, JOB_STATUS_CHANGE waiting, JOB_STATUS_CHANGE pending, " +
         "BLOCK_JOB_COMPLETED, JOB_STATUS_CHANGE concluded, BLOCK_EXPORT_DELETED, JOB_STATUS_CHANGE null"],
        async (qmp, log, dir) =>
        {
            await StartAsync(qmp, log, "drive-mirror", new JsonObject
            {
                ["job-id"] = "disk", ["device"] = "disk", ["target"] = $"{dir}/copy.qcow2", ["format"] = "qcow2", ["sync"] = "full", ["auto-dismiss"] = false,
            });
            await JobQmp.WaitStatusAsync(qmp, "disk", "ready");
            await StartAsync(qmp, log, "job-complete", new JsonObject { ["id"] = "disk" });
            await JobQmp.WaitStatusAsync(qmp, "disk", "concluded");
        });

    /// <summary>Beyond iotest 185: SIGTERM instead of quit ends the jobs the same way, announced before the monitor closes.</summary>
    [SkippableFact]
    public async Task Start_mirror_job_and_terminate_qemu()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("iotest185", (daemon, dir) => QuitWithJobAsync(daemon, dir, (qmp, log) => StartAsync(qmp, log, "drive-mirror", new JsonObject
        {
            ["job-id"] = "disk", ["device"] = "disk", ["target"] = $"{dir}/copy.qcow2", ["format"] = "qcow2", ["sync"] = "full", ["speed"] = 65536, ["buf-size"] = 65536,
        }), sigterm: true));
        Assert.Equal(["drive-mirror: ok", $"events: JOB_STATUS_CHANGE created, JOB_STATUS_CHANGE running, BLOCK_EXPORT_DELETED, {Cancelled}"], qsd);
        JobQmp.AssertSame(qsd, ours);
    }
}
