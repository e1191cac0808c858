using System.Text.Json.Nodes;
using BlockMirror.Cli.Tests.Iotests;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A mirror onto an NBD destination that dies mid-copy (qemu-nbd, SIGKILL) and comes back on the same socket,
/// run the same way on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: with reconnect-delay the job
/// survives, without it the target error policy applies, a cancel with the destination down ends the job, and
/// the source's writers (qemu-io through the source's NBD export) go on while the destination is down.
/// </summary>
public sealed class MirrorNbdReconnectDifferentialTests
{
    const string Size = "8M";

    /// <summary>Bytes a second: the copy takes about two seconds, so the destination dies in the middle of it.</summary>
    const long Speed = 4 << 20;

    /// <summary>The job on one daemon, the destination killed once it has copied something.</summary>
    /// <param name="TargetEqualsSource">Once the daemon and the destination are gone, the target must equal the source.</param>
    /// <param name="KillWhenReady">The destination dies once the job is READY (no speed limit), not mid-copy.</param>
    /// <param name="QuitTook">Told how long the daemon took from quit (after the scenario) to its exit.</param>
    sealed record Scenario(string OnTargetError, int ReconnectDelay, Func<IotestSession, NbdDestination, Task> AfterKill,
        bool TargetEqualsSource = false, bool KillWhenReady = false, Action<TimeSpan>? QuitTook = null);

    [SkippableFact]
    public async Task With_reconnect_delay_the_job_survives_the_destination_dying_and_the_target_equals_the_source()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-reconnect", (daemon, dir) => RunAsync(daemon, dir, new Scenario("report", 30, async (session, destination) =>
        {
            // The destination is down: a write to the source must not wait for it.
            await WriteSourceAsync(session, "write -P 0x33 1M 64k");
            await destination.RestartAsync();
            await session.CompleteAndWaitAsync();
        }, TargetEqualsSource: true)));

        JobQmp.AssertSame(qsd, ours);
        Assert.Equal(DifferentialDaemon.ReadyJobEvents, ours);
    }

    [SkippableFact]
    public async Task Without_reconnect_delay_the_job_fails_with_report()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-report", (daemon, dir) => RunAsync(daemon, dir, new Scenario("report", 0, async (session, _) =>
        {
            await WriteSourceAsync(session, "write -P 0x33 1M 64k");
            await session.WaitGoneAsync();
        })));

        JobQmp.AssertSame(WithoutRepeats(qsd), WithoutRepeats(ours));
        Assert.Equal(
        [
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "BLOCK_JOB_ERROR write report", "JOB_STATUS_CHANGE aborting",
            "BLOCK_JOB_COMPLETED error: Input/output error", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
        ], WithoutRepeats(ours));
    }

    /// <summary>
    /// on-target-error=stop without reconnect-delay: the job pauses, and resumed once the destination is back it
    /// finishes. A deliberate difference, pinned: QEMU 7.2 starts connecting again only when a request meets the
    /// lost connection after the pause (its first request after the resume usually fails, so the job stops a
    /// second time and needs a second resume); ours connects again as soon as the connection is lost, so one resume
    /// after the destination is back is enough.
    /// </summary>
    [SkippableFact]
    public async Task Without_reconnect_delay_stop_pauses_the_job_and_it_resumes_once_the_destination_is_back()
    {
        var resumes = new Dictionary<string, int>();
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-stop", (daemon, dir) => RunAsync(daemon, dir, new Scenario("stop", 0, async (session, destination) =>
        {
            Assert.Equal("paused", await JobQmp.WaitStatusAsync(session.Qmp, "job0", "paused"));
            await destination.RestartAsync();
            // Time for a background reconnect (ours tries again 1 s, then 2 s after a failed attempt).
            await Task.Delay(TimeSpan.FromSeconds(4));
            var count = 0;
            while (await JobQmp.StatusAsync(session.Qmp, "job0") == "paused" && count < 5)
            {
                count++;
                await session.RunAsync("block-job-resume", new JsonObject { ["device"] = "job0" });
                Assert.NotEqual(JobQmp.Gone, await JobQmp.WaitStatusAsync(session.Qmp, "job0", "paused", "ready"));
            }

            resumes[daemon.Name] = count;
            await session.CompleteAndWaitAsync();
        }, TargetEqualsSource: true)));

        // QEMU 7.2 usually stops a second time, but not always: when its first request after the resume is the
        // one that connects again, it goes through (seen once in CI); and now and then a third time, when more than
        // one request meets the lost connection (seen once in CI, 2026-12-07). Ours needs one resume every time.
        Assert.InRange(resumes["qsd"], 1, 4);
        Assert.Equal(1, resumes["ours"]);
        string[] stopped = ["BLOCK_JOB_ERROR write stop", "JOB_STATUS_CHANGE paused", "JOB_STATUS_CHANGE running"];
        Assert.Equal([.. ReadyJobStart, .. Enumerable.Repeat(stopped, resumes["qsd"]).SelectMany(e => e), .. ReadyJobEnd], WithoutRepeats(qsd));
        Assert.Equal([.. ReadyJobStart, .. stopped, .. ReadyJobEnd], WithoutRepeats(ours));
    }

    static readonly string[] ReadyJobStart = DifferentialDaemon.ReadyJobEvents[..2];

    static readonly string[] ReadyJobEnd = DifferentialDaemon.ReadyJobEvents[2..];

    /// <summary>
    /// A forced cancel while requests wait for a destination that is down: both daemons give up on the waiting
    /// requests (QEMU's bdrv_cancel_in_flight) and the job ends cancelled. A deliberate difference, pinned: QEMU
    /// reports the requests it gave up on as BLOCK_JOB_ERROR (when any had met the lost connection yet); ours
    /// does not, the user cancelled them. The delay is short enough for qemu-storage-daemon's quit, which
    /// flushes the target and so may wait out the delay (see the quit test).
    /// </summary>
    [SkippableFact]
    public async Task A_forced_cancel_with_the_destination_down_ends_the_job_while_requests_wait_to_reconnect()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-force", (daemon, dir) => RunAsync(daemon, dir, new Scenario("report", 10, async (session, _) =>
        {
            await WriteSourceAsync(session, "write -P 0x33 1M 64k");
            await session.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0", ["force"] = true });
            await session.WaitGoneAsync();
        })));

        string[] end = ["JOB_STATUS_CHANGE aborting", "BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"];
        Assert.Equal([.. ReadyJobStart, .. end], qsd.Where(e => e != "BLOCK_JOB_ERROR write report"));
        Assert.Equal([.. ReadyJobStart, .. end], ours);
    }

    /// <summary>
    /// A soft cancel of a READY mirror with on-target-error=ignore, the destination down and new data in the
    /// source: a soft cancel must still copy it, the copy fails, and ignore tries again. QEMU 7.2 loops there
    /// without end (pinned: still READY after the cancel, BLOCK_JOB_ERROR after BLOCK_JOB_ERROR, until a forced
    /// cancel ends it). Ours reports an error that comes once a cancel was asked for, whatever the policy, and
    /// the job ends with it: a deliberate difference.
    /// </summary>
    [SkippableFact]
    public async Task A_soft_cancel_with_the_destination_down_ends_the_job_where_QEMU_loops()
    {
        var looped = new Dictionary<string, bool>();
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-soft", (daemon, dir) => RunAsync(daemon, dir, new Scenario("ignore", 0, async (session, _) =>
        {
            await WriteSourceAsync(session, "write -P 0x33 1M 64k");
            await session.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
            // Long enough for a job that ends to have ended (ours ends at its next failed copy, within a second).
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
            while (await JobQmp.StatusAsync(session.Qmp, "job0") != JobQmp.Gone && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }

            looped[daemon.Name] = await JobQmp.StatusAsync(session.Qmp, "job0") != JobQmp.Gone;
            if (looped[daemon.Name])
            {
                var errors = session.Qmp.Events.Count(e => (string?)e["event"] == "BLOCK_JOB_ERROR");
                Assert.Equal("ready", await JobQmp.StatusAsync(session.Qmp, "job0"));
                Assert.True(session.Qmp.Events.Count(e => (string?)e["event"] == "BLOCK_JOB_ERROR") > errors);
                await session.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0", ["force"] = true });
                Assert.Equal(JobQmp.Gone, await JobQmp.WaitStatusAsync(session.Qmp, "job0", JobQmp.Gone));
            }
        }, KillWhenReady: true)));

        Assert.True(looped["qsd"]);
        Assert.False(looped["ours"]);
        string[] ready = [.. DifferentialDaemon.ReadyJobEvents[..4]];
        Assert.Equal([.. ready, "BLOCK_JOB_ERROR write ignore", "JOB_STATUS_CHANGE aborting", "BLOCK_JOB_CANCELLED",
            "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"], WithoutRepeats(qsd));
        // Whether ours met the error before the cancel too (and ignored it) depends on timing.
        Assert.Equal([.. ready, "BLOCK_JOB_ERROR write report", "JOB_STATUS_CHANGE aborting",
            "BLOCK_JOB_COMPLETED error: Input/output error", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"],
            WithoutRepeats(ours).Where(e => e != "BLOCK_JOB_ERROR write ignore"));
    }

    /// <summary>
    /// A soft cancel of a READY mirror with new data in the source and the destination down: the copy waits
    /// for a new connection until reconnect-delay runs out, then fails, and the job ends with the error.
    /// </summary>
    [SkippableFact]
    public async Task A_soft_cancel_with_the_destination_down_ends_the_job_once_reconnect_delay_runs_out()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-soft-delay", (daemon, dir) => RunAsync(daemon, dir, new Scenario("report", 2, async (session, _) =>
        {
            await WriteSourceAsync(session, "write -P 0x33 1M 64k");
            await session.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
            Assert.Equal(JobQmp.Gone, await JobQmp.WaitStatusAsync(session.Qmp, "job0", JobQmp.Gone));
        }, KillWhenReady: true)));

        JobQmp.AssertSame(WithoutRepeats(qsd), WithoutRepeats(ours));
        Assert.Equal([.. DifferentialDaemon.ReadyJobEvents[..4], "BLOCK_JOB_ERROR write report", "JOB_STATUS_CHANGE aborting",
            "BLOCK_JOB_COMPLETED error: Input/output error", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"], WithoutRepeats(ours));
    }

    /// <summary>
    /// quit while the job's requests wait for a destination that is down: both daemons cancel the job and exit.
    /// A deliberate difference, pinned: qemu-storage-daemon 7.2 drains the target first and so waits out
    /// reconnect-delay (10 s here) before it exits; ours gives up on the waiting requests (as a forced cancel
    /// does) and exits at once. The bounds are half the delay apart from what either measures.
    /// </summary>
    [SkippableFact]
    public async Task Quit_with_the_destination_down_and_requests_waiting_to_reconnect_exits()
    {
        const int Delay = 10;
        var took = new Dictionary<string, TimeSpan>();
        var (qsd, ours) = await JobQmp.OnBothAsync("nbd-quit", (daemon, dir) => RunAsync(daemon, dir, new Scenario("report", Delay, async (session, _) =>
        {
            await WriteSourceAsync(session, "write -P 0x33 1M 64k");
            Assert.Equal("ready", await JobQmp.StatusAsync(session.Qmp, "job0"));
        }, KillWhenReady: true, QuitTook: time => took[daemon.Name] = time)));

        Assert.True(took["qsd"] > TimeSpan.FromSeconds(Delay / 2.0), $"qemu-storage-daemon exited after {took["qsd"]}");
        Assert.True(took["ours"] < TimeSpan.FromSeconds(Delay / 2.0), $"ours exited after {took["ours"]}");
        Assert.Contains("BLOCK_JOB_CANCELLED", qsd);
        Assert.Contains("BLOCK_JOB_CANCELLED", ours);
    }

    /// <summary>Runs the scenario on one daemon: source with data, destination up, mirror, kill, then the scenario.</summary>
    static async Task<List<string>> RunAsync(DifferentialDaemon daemon, string dir, Scenario scenario)
    {
        await QemuImages.CreateAsync($"{dir}/source.raw", Size, "write -P 0x5a 0 " + Size);
        await QemuImages.CreateAsync($"{dir}/target.raw", Size);
        List<string> events;
        var quitting = new System.Diagnostics.Stopwatch();
        await using (var destination = await NbdDestination.StartAsync($"{dir}/target.raw", $"{dir}/dest.sock"))
        {
            events = await daemon.RunAsync(dir, [.. IotestRun.RawNode(dir, "source", "source.raw"), .. destination.ClientNode("target", scenario.ReconnectDelay)], "source",
            async (qmp, uri) =>
            {
                var session = new IotestSession(qmp, dir, uri, []);
                await session.RunAsync("blockdev-mirror", new JsonObject
                {
                    ["job-id"] = "job0", ["device"] = "source", ["target"] = "target", ["sync"] = "full",
                    ["speed"] = scenario.KillWhenReady ? 0 : Speed, ["on-target-error"] = scenario.OnTargetError,
                });
                await (scenario.KillWhenReady ? session.WaitReadyAsync() : WaitCopyingAsync(session));
                await destination.KillAsync();
                await scenario.AfterKill(session, destination);
                quitting.Start();
            });
            scenario.QuitTook?.Invoke(quitting.Elapsed);
        }

        if (scenario.TargetEqualsSource)
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/source.raw", $"{dir}/target.raw");
        }

        return JobErrorEvents.WithoutDrainPauses(events);
    }

    /// <summary>Waits until the job has copied something (and not everything): the destination then dies mid-copy.</summary>
    static async Task WaitCopyingAsync(IotestSession session)
    {
        using var guard = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        while (true)
        {
            var jobs = (await session.RunAsync("query-jobs"))!.AsArray();
            if (jobs.Count == 1 && (long)jobs[0]!["current-progress"]! > 0)
            {
                return;
            }

            await Task.Delay(10, guard.Token);
        }
    }

    /// <summary>A write through the source's NBD export; it must return while the destination is down.</summary>
    static Task WriteSourceAsync(IotestSession session, string command) =>
        ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", command, session.Uri).WaitAsync(TimeSpan.FromSeconds(60));

    /// <summary>
    /// The events with runs of the same BLOCK_JOB_ERROR as one: each request in flight when the destination
    /// dies fails on its own, and how many were in flight depends on timing, on both daemons.
    /// </summary>
    static List<string> WithoutRepeats(List<string> events) =>
        [.. events.Where((e, i) => i == 0 || !(e.StartsWith("BLOCK_JOB_ERROR", StringComparison.Ordinal) && e == events[i - 1]))];
}
