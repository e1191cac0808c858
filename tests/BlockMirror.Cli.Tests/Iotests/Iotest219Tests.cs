using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 219, "the job-* QMP commands with block jobs", run unchanged on qemu-storage-daemon 7.2 and
/// on <c>blockmirror serve</c>: a mirror walked through running, ready, pending and concluded, with
/// block-job-* and job-* pause/resume mixed in each state, and in each state the verbs it must refuse. Every
/// reply, every state the job is seen in, and every event must agree; the copy must equal the disk.
/// </summary>
/// <remarks>
/// The iotest walks a drive-mirror with the defaults, then drive-backup with each auto-finalize/auto-dismiss
/// combination; BlockMirror has no backup job, so the combinations are walked with drive-mirror. The iotest
/// logs progress numbers, which depend on timing here; these compare the states instead.
/// </remarks>
public sealed class Iotest219Tests
{

    const string Job = "job0";

    static async Task<List<string>> LifecycleAsync(DifferentialDaemon daemon, string dir, bool autoFinalize, bool autoDismiss)
    {
        await ImageRecipes.Qcow2Async(dir, "disk.qcow2", "4M", [], ["write 0 4M"]);
        var log = new List<string>();
        var events = await daemon.RunAsync(dir,
            ["--blockdev", $"driver=qcow2,node-name=drive0-node,file.driver=file,file.filename={dir}/disk.qcow2", .. JobQmp.NullNode("exp", 1 << 20)], "exp",
            async (qmp, _) =>
            {
                async Task Log(string command, JsonObject arguments) =>
                    log.Add($"{command} {arguments.ToJsonString()}: {await JobQmp.ReplyAsync(qmp, command, arguments)}");

                async Task Refused(params string[] verbs)
                {
                    foreach (var verb in verbs)
                    {
                        await Log(verb, verb is "block-job-pause" or "block-job-complete" ? new() { ["device"] = Job } : new() { ["id"] = Job });
                    }
                }

                // 256 KiB/s in 64 KiB requests: the job passes a pause point four times a second.
                await Log("drive-mirror", new JsonObject
                {
                    ["job-id"] = Job, ["device"] = "drive0-node", ["target"] = $"{dir}/copy.qcow2", ["sync"] = "full",
                    ["speed"] = 262144, ["buf-size"] = 65536, ["auto-finalize"] = autoFinalize, ["auto-dismiss"] = autoDismiss,
                });
                log.Add($"status: {await JobQmp.WaitStatusAsync(qmp, Job, "running")}");

                // RUNNING: pause/resume work; complete, finalize, dismiss are refused.
                await PauseResumeAsync(qmp, log, "paused", "running");
                await Refused("job-complete", "job-finalize", "job-dismiss", "block-job-complete", "block-job-finalize", "block-job-dismiss");

                // Let the job reach READY.
                await Log("block-job-set-speed", new JsonObject { ["device"] = Job, ["speed"] = 0 });
                await qmp.WaitEventAsync("BLOCK_JOB_READY");
                log.Add($"status: {await JobQmp.WaitStatusAsync(qmp, Job, "ready")}");

                // READY: pause/resume work; finalize, dismiss are refused; complete moves on.
                await PauseResumeAsync(qmp, log, "standby", "ready");
                await Refused("job-finalize", "job-dismiss", "block-job-finalize", "block-job-dismiss");
                await Log("job-complete", new JsonObject { ["id"] = Job });

                if (!autoFinalize)
                {
                    // PENDING: finalize works; pause, complete, dismiss are refused.
                    log.Add($"status: {await JobQmp.WaitStatusAsync(qmp, Job, "pending")}");
                    await Refused("job-pause", "job-complete", "job-dismiss", "block-job-pause", "block-job-complete", "block-job-dismiss");
                    await Log("job-finalize", new JsonObject { ["id"] = Job });
                }

                if (!autoDismiss)
                {
                    // CONCLUDED: dismiss works; pause, complete, finalize are refused.
                    log.Add($"status: {await JobQmp.WaitStatusAsync(qmp, Job, "concluded")}");
                    await Refused("job-pause", "job-complete", "job-finalize", "block-job-pause", "block-job-complete", "block-job-finalize");
                    await Log("job-dismiss", new JsonObject { ["id"] = Job });
                }

                await DifferentialDaemon.WaitJobGoneAsync(qmp);
                log.Add($"query-jobs: {(await qmp.ExecuteAsync("query-jobs"))!.ToJsonString()}");
            });
        log.Add($"events: {string.Join(", ", JobQmp.WithoutQuitDrainPauses(events))}");
        await QemuImages.AssertIdenticalAsync($"{dir}/disk.qcow2", $"{dir}/copy.qcow2", "qcow2", "qcow2");
        return [.. log.Select(line => line.Replace(dir, "DIR", StringComparison.Ordinal))];
    }

    /// <summary>iotest 219's test_pause_resume: each of block-job-pause/job-pause with each of block-job-resume/job-resume.</summary>
    static async Task PauseResumeAsync(QmpClient qmp, List<string> log, string paused, string resumed)
    {
        foreach (var (pause, pauseKey) in new[] { ("block-job-pause", "device"), ("job-pause", "id") })
        {
            foreach (var (resume, resumeKey) in new[] { ("block-job-resume", "device"), ("job-resume", "id") })
            {
                log.Add($"{pause}: {await JobQmp.ReplyAsync(qmp, pause, new JsonObject { [pauseKey] = Job })}");
                log.Add($"status: {await JobQmp.WaitStatusAsync(qmp, Job, paused)}");
                log.Add($"{resume}: {await JobQmp.ReplyAsync(qmp, resume, new JsonObject { [resumeKey] = Job })}");
                log.Add($"status: {await JobQmp.WaitStatusAsync(qmp, Job, resumed)}");
            }
        }
    }

    static async Task AssertAgreeAsync(bool autoFinalize, bool autoDismiss)
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("iotest219", (daemon, dir) => LifecycleAsync(daemon, dir, autoFinalize, autoDismiss));

        // The refusals are QEMU's: each names the state the job was in.
        Assert.Contains("job-finalize {\"id\":\"job0\"}: GenericError: Job 'job0' in state 'running' cannot accept command verb 'finalize'", qsd);
        Assert.Contains("job-dismiss {\"id\":\"job0\"}: GenericError: Job 'job0' in state 'ready' cannot accept command verb 'dismiss'", qsd);
        JobQmp.AssertSame(qsd, ours);
    }

    /// <summary>iotest 219, test_job_lifecycle with drive-mirror (auto-finalize and auto-dismiss on).</summary>
    [SkippableFact]
    public Task Job_lifecycle_drive_mirror() => AssertAgreeAsync(autoFinalize: true, autoDismiss: true);

    /// <summary>iotest 219, test_job_lifecycle with auto-finalize on, auto-dismiss off (drive-backup there, drive-mirror here).</summary>
    [SkippableFact]
    public Task Job_lifecycle_auto_finalize_on_auto_dismiss_off() => AssertAgreeAsync(autoFinalize: true, autoDismiss: false);

    /// <summary>iotest 219, test_job_lifecycle with auto-finalize off, auto-dismiss on (drive-backup there, drive-mirror here).</summary>
    [SkippableFact]
    public Task Job_lifecycle_auto_finalize_off_auto_dismiss_on() => AssertAgreeAsync(autoFinalize: false, autoDismiss: true);

    /// <summary>iotest 219, test_job_lifecycle with auto-finalize and auto-dismiss off (drive-backup there, drive-mirror here).</summary>
    [SkippableFact]
    public Task Job_lifecycle_auto_finalize_off_auto_dismiss_off() => AssertAgreeAsync(autoFinalize: false, autoDismiss: false);
}
