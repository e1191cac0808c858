using BlockMirror.Jobs.Events;

namespace BlockMirror.Jobs.Tests;

/// <summary>
/// The job state machine on live jobs: every verb in every state a job can be held in, the errors QEMU
/// gives, and the exact event sequences of each way a job can end.
/// </summary>
public sealed class JobLifecycleTests
{
    const string Id = "job0";
    const long NewSpeed = 1 << 20;

    static readonly JobStatus[] LiveStates =
    [
        JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby,
        JobStatus.Pending, JobStatus.Aborting, JobStatus.Concluded, JobStatus.Null,
    ];

    static readonly string[] CancelledEnd = ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"];
    static readonly string[] CompletedEnd = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"];

    /// <summary>
    /// Every state a test can hold a job in, with every verb. (Waiting passes within one step of the job,
    /// and undefined exists only before the job is registered; the table tests cover those columns.)
    /// </summary>
    public static TheoryData<JobStatus, JobVerb> LiveStatesAndVerbs()
    {
        var data = new TheoryData<JobStatus, JobVerb>();
        foreach (var status in LiveStates)
        {
            // Change is a mirror's verb (block-job-change): WriteBlockingTests and the QMP tests apply it.
            foreach (var verb in Enum.GetValues<JobVerb>().Where(v => v != JobVerb.Change))
            {
                data.Add(status, verb);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(LiveStatesAndVerbs))]
    public async Task A_verb_is_applied_or_refused_as_QEMUs_table_says(JobStatus state, JobVerb verb)
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = await BringToAsync(manager, state);
        try
        {
            Assert.Equal(state, job.Status);
            if (!JobStateTableTests.QemuAccepts(state, verb))
            {
                await AssertRefusedAsync(job, log, verb,
                    $"Job '{Id}' in state '{state.ToWireName()}' cannot accept command verb '{verb.ToWireName()}'");
            }
            else
            {
                await AssertAcceptedAsync(manager, job, log, state, verb);
            }
        }
        finally
        {
            await CleanUpAsync(job);
        }
    }

    /// <summary>What an accepted verb does, state by state; a pair missing here fails the test.</summary>
    static async Task AssertAcceptedAsync(JobManager manager, TestJob job, EventLog log, JobStatus state, JobVerb verb)
    {
        var mark = log.Count;
        switch (state, verb)
        {
            case (_, JobVerb.Cancel):
                await ApplyAsync(job, verb);
                await job.Finished.WaitAsync(TestJob.Limit);
                string[] expected = state switch
                {
                    // Never started: no BLOCK_JOB_CANCELLED, as in QEMU (events only for started jobs).
                    JobStatus.Created => ["aborting", "concluded", "null"],

                    // The body leaves its pause point first, so the state goes back before it ends.
                    JobStatus.Paused => ["running", .. CancelledEnd],
                    JobStatus.Standby => ["ready", .. CancelledEnd],
                    _ => CancelledEnd,
                };
                Assert.Equal(expected, log.Names.Skip(mark));
                Assert.Null(manager.Find(Id));
                break;

            case (JobStatus.Created, JobVerb.Pause):
                await ApplyAsync(job, verb);
                await SettleAsync();
                Assert.Equal(JobStatus.Created, job.Status);
                Assert.True(job.IsPaused && job.IsUserPaused);
                Assert.Equal(mark, log.Count);

                // The pause holds from the start: the body stops at its first pause point.
                job.Start();
                await job.WaitParkedAsync(JobStatus.Paused);
                Assert.Equal(["running", "paused"], log.Names.Skip(mark));
                break;

            case (JobStatus.Running or JobStatus.Ready, JobVerb.Pause):
                await ApplyAsync(job, verb);
                var paused = state == JobStatus.Running ? JobStatus.Paused : JobStatus.Standby;
                await job.WaitParkedAsync(paused);
                Assert.True(job.IsPaused && job.IsUserPaused);
                Assert.Equal([paused.ToWireName()], log.Names.Skip(mark));
                break;

            case (JobStatus.Paused or JobStatus.Standby, JobVerb.Pause):
                await AssertRefusedAsync(job, log, verb, "Job is already paused");
                break;

            case (JobStatus.Created or JobStatus.Running or JobStatus.Ready, JobVerb.Resume):
                await AssertRefusedAsync(job, log, verb, "Can't resume a job that was not paused");
                break;

            case (JobStatus.Paused or JobStatus.Standby, JobVerb.Resume):
                await ApplyAsync(job, verb);
                var resumed = state == JobStatus.Paused ? JobStatus.Running : JobStatus.Ready;
                await job.WaitParkedAsync(resumed);
                Assert.False(job.IsPaused || job.IsUserPaused);
                Assert.Equal([resumed.ToWireName()], log.Names.Skip(mark));
                break;

            case (_, JobVerb.SetSpeed):
                var pausedBefore = job.IsPaused;
                await ApplyAsync(job, verb);
                await SettleAsync();
                Assert.Equal(NewSpeed, job.Speed);
                Assert.Equal(state, job.Status);
                Assert.Equal(pausedBefore, job.IsPaused);
                Assert.Equal(mark, log.Count);
                break;

            case (JobStatus.Ready, JobVerb.Complete):
                await ApplyAsync(job, verb);
                await job.Finished.WaitAsync(TestJob.Limit);
                Assert.Equal(CompletedEnd, log.Names.Skip(mark));
                break;

            case (JobStatus.Standby, JobVerb.Complete):
                // Accepted, but a paused job stays paused: it completes once the user resumes it.
                await ApplyAsync(job, verb);
                await SettleAsync();
                Assert.Equal(1, job.CompleteCalls);
                Assert.Equal(JobStatus.Standby, job.Status);
                Assert.Equal(mark, log.Count);
                job.Resume();
                await job.Finished.WaitAsync(TestJob.Limit);
                Assert.Equal(["ready", .. CompletedEnd], log.Names.Skip(mark));
                break;

            case (JobStatus.Pending, JobVerb.Finalize):
                await ApplyAsync(job, verb);
                await job.Finished.WaitAsync(TestJob.Limit);
                Assert.Equal(["BLOCK_JOB_COMPLETED", "concluded", "null"], log.Names.Skip(mark));
                Assert.Equal(1, job.Prepare.Calls);
                break;

            case (JobStatus.Concluded, JobVerb.Dismiss):
                Assert.Same(job, manager.Find(Id));
                await ApplyAsync(job, verb);
                Assert.Equal(JobStatus.Null, job.Status);
                Assert.Equal(["null"], log.Names.Skip(mark));
                Assert.Null(manager.Find(Id));
                break;

            default:
                Assert.Fail($"no expectation written for {verb.ToWireName()} in {state.ToWireName()}");
                break;
        }
    }

    // ----- Errors other than the table's -----

    [Fact]
    public async Task Resume_of_a_job_that_is_not_paused_says_so_before_the_table_is_consulted()
    {
        // QEMU's job_user_resume checks "paused" first: in pending (where resume is refused) an unpaused
        // job still gets this message.
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id, autoFinalize: false);
        await job.WaitParkedAsync(JobStatus.Running);
        job.Finish();
        await job.WaitStatusAsync(JobStatus.Pending);
        await AssertRefusedAsync(job, log, JobVerb.Resume, "Can't resume a job that was not paused");
        await job.FinalizeAsync();
    }

    [Fact]
    public async Task Complete_on_a_job_that_cannot_complete_is_refused_and_changes_nothing()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id, supportsComplete: false);
        await job.WaitParkedAsync(JobStatus.Running);
        job.MakeReady();
        await job.WaitParkedAsync(JobStatus.Ready);
        await AssertRefusedAsync(job, log, JobVerb.Complete, $"The active block job '{Id}' cannot be completed");
        Assert.Equal(0, job.CompleteCalls);
        await CleanUpAsync(job);
    }

    [Fact]
    public async Task Complete_before_ready_is_refused_by_the_table()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id);
        await job.WaitParkedAsync(JobStatus.Running);
        await AssertRefusedAsync(job, log, JobVerb.Complete, $"Job '{Id}' in state 'running' cannot accept command verb 'complete'");
        Assert.Equal(0, job.CompleteCalls);
        await CleanUpAsync(job);
    }

    [Fact]
    public async Task A_second_job_with_the_same_id_is_refused_and_nothing_changes()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var first = TestJob.Create(manager, Id);
        await first.WaitParkedAsync(JobStatus.Running);
        var mark = log.Count;

        var second = new TestJob(manager, Id);
        var ex = Assert.Throws<JobException>(() => manager.Register(second));
        Assert.Equal($"Job ID '{Id}' already in use", ex.Message);
        Assert.Equal(JobStatus.Undefined, second.Status);
        Assert.Equal([first], manager.Jobs);
        Assert.Same(first, manager.Find(Id));
        Assert.Equal(mark, log.Count);
        Assert.Throws<JobException>(() => manager.ValidateNewId(Id));

        // The first job is untouched.
        Assert.Equal(JobStatus.Running, first.Status);
        first.Finish();
        await first.Finished.WaitAsync(TestJob.Limit);
        manager.ValidateNewId(Id);
    }

    [Theory]
    [InlineData("")]
    [InlineData("0job")]
    [InlineData("-job")]
    [InlineData("_job")]
    [InlineData("job 0")]
    [InlineData("job/0")]
    [InlineData("jöb")]
    public void An_invalid_job_id_is_refused(string id)
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var ex = Assert.Throws<JobException>(() => manager.ValidateNewId(id));
        Assert.Equal($"Invalid job ID '{id}'", ex.Message);

        // Registering is the one gate every job passes, as QEMU's job_create: it checks the form too.
        var job = new TestJob(manager, id);
        ex = Assert.Throws<JobException>(() => manager.Register(job));
        Assert.Equal($"Invalid job ID '{id}'", ex.Message);
        Assert.Empty(manager.Jobs);
        Assert.Equal(JobStatus.Undefined, job.Status);
        Assert.Equal(0, log.Count);
    }

    [Theory]
    [InlineData("j")]
    [InlineData("job0")]
    [InlineData("a-b.c_D9")]
    public void A_well_formed_job_id_is_accepted(string id)
    {
        var manager = new JobManager();
        manager.ValidateNewId(id);
        manager.Register(new TestJob(manager, id));
        Assert.Equal(JobStatus.Created, manager.Get(id).Status);
    }

    // ----- Event sequences -----

    [Fact]
    public async Task Success_with_auto_finalize_and_auto_dismiss()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id);
        await job.WaitParkedAsync(JobStatus.Running);
        job.Finish();
        await job.Finished.WaitAsync(TestJob.Limit);

        Assert.Equal(["created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"], log.Names);
        var completed = Assert.Single(log.Events.OfType<BlockJobCompletedEvent>());
        Assert.Equal((JobType.Stream, Id, (string?)null), (completed.Type, completed.Device, completed.Error));
        Assert.All(log.Events.OfType<JobStatusChangeEvent>(), e => Assert.Equal(Id, e.Id));
        Assert.Equal((1, 0), (job.Prepare.Calls, job.Abort.Calls));
        Assert.Null(manager.Find(Id));
    }

    [Fact]
    public async Task Without_auto_finalize_the_job_waits_in_pending_for_finalize()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id, autoFinalize: false);
        await job.WaitParkedAsync(JobStatus.Running);
        job.Finish();
        await log.WaitForAsync(e => e is BlockJobPendingEvent, "BLOCK_JOB_PENDING");
        await SettleAsync();

        Assert.Equal(["created", "running", "waiting", "pending", "BLOCK_JOB_PENDING"], log.Names);
        Assert.Equal(JobStatus.Pending, job.Status);
        Assert.Equal(0, job.Prepare.Calls);
        Assert.Equal(Id, Assert.Single(log.Events.OfType<BlockJobPendingEvent>()).Id);

        await job.FinalizeAsync();
        await job.Finished.WaitAsync(TestJob.Limit);
        Assert.Equal(["created", "running", "waiting", "pending", "BLOCK_JOB_PENDING", "BLOCK_JOB_COMPLETED", "concluded", "null"], log.Names);
        Assert.Equal(1, job.Prepare.Calls);
    }

    [Fact]
    public async Task Without_auto_dismiss_the_job_stays_concluded_until_dismissed()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id, autoDismiss: false);
        await job.WaitParkedAsync(JobStatus.Running);
        job.Finish();
        await job.Finished.WaitAsync(TestJob.Limit);
        await SettleAsync();

        Assert.Equal(["created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded"], log.Names);
        Assert.Equal(JobStatus.Concluded, job.Status);
        Assert.Same(job, manager.Find(Id));

        job.Dismiss();
        Assert.Equal(["created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"], log.Names);
        Assert.Equal(JobStatus.Null, job.Status);
        Assert.Null(manager.Find(Id));
    }

    [Fact]
    public async Task A_failure_aborts_and_reports_the_error_in_BLOCK_JOB_COMPLETED()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id);
        await job.WaitParkedAsync(JobStatus.Running);
        job.Fail(new InvalidOperationException("the body failed"));
        await job.Finished.WaitAsync(TestJob.Limit);

        Assert.Equal(["created", "running", "aborting", "BLOCK_JOB_COMPLETED (error)", "concluded", "null"], log.Names);
        Assert.Equal("the body failed", Assert.Single(log.Events.OfType<BlockJobCompletedEvent>()).Error);
        Assert.Equal("the body failed", job.Error);
        Assert.IsType<InvalidOperationException>(job.Failure);
        Assert.Equal((0, 1), (job.Prepare.Calls, job.Abort.Calls));
    }

    [Fact]
    public async Task A_forced_cancel_aborts_and_reports_BLOCK_JOB_CANCELLED()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id);
        await job.WaitParkedAsync(JobStatus.Running);
        await job.CancelAsync(force: true);
        await job.Finished.WaitAsync(TestJob.Limit);

        Assert.Equal(["created", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"], log.Names);
        var cancelled = Assert.Single(log.Events.OfType<BlockJobCancelledEvent>());
        Assert.Equal((JobType.Stream, Id), (cancelled.Type, cancelled.Device));
        Assert.Equal("Operation canceled", job.Error);
        Assert.Equal((0, 1), (job.Prepare.Calls, job.Abort.Calls));
    }

    [Fact]
    public async Task Pause_and_resume_go_through_paused_and_standby()
    {
        var manager = new JobManager();
        using var log = new EventLog(manager);
        var job = TestJob.Create(manager, Id);
        await job.WaitParkedAsync(JobStatus.Running);
        job.Pause();
        await job.WaitParkedAsync(JobStatus.Paused);
        Assert.True(job.GetInfo().Paused);
        job.Resume();
        await job.WaitParkedAsync(JobStatus.Running);
        Assert.False(job.GetInfo().Paused);

        job.MakeReady();
        await job.WaitParkedAsync(JobStatus.Ready);
        job.Pause();
        await job.WaitParkedAsync(JobStatus.Standby);
        Assert.True(job.GetInfo() is { Paused: true, Ready: true, Status: JobStatus.Standby });
        job.Resume();
        await job.WaitParkedAsync(JobStatus.Ready);

        job.Complete();
        await job.Finished.WaitAsync(TestJob.Limit);
        Assert.Equal(
            ["created", "running", "paused", "running", "ready", "BLOCK_JOB_READY", "standby", "ready", .. CompletedEnd],
            log.Names);
    }

    // ----- Helpers -----

    /// <summary>Registers and steers a test job into <paramref name="state"/>.</summary>
    /// <remarks>
    /// From pending on, the job carries a user pause asked for while its body was busy: resume is then
    /// refused by the table rather than by "not paused", which QEMU checks first.
    /// </remarks>
    static async Task<TestJob> BringToAsync(JobManager manager, JobStatus state)
    {
        TestJob job;
        switch (state)
        {
            case JobStatus.Created:
                return TestJob.Create(manager, Id, start: false);

            case JobStatus.Running or JobStatus.Paused or JobStatus.Ready or JobStatus.Standby:
                job = TestJob.Create(manager, Id);
                await job.WaitParkedAsync(JobStatus.Running);
                if (state is JobStatus.Ready or JobStatus.Standby)
                {
                    job.MakeReady();
                    await job.WaitParkedAsync(JobStatus.Ready);
                }

                if (state is JobStatus.Paused or JobStatus.Standby)
                {
                    job.Pause();
                    await job.WaitParkedAsync(state);
                }

                return job;

            case JobStatus.Pending:
                job = TestJob.Create(manager, Id, autoFinalize: false, busyBody: true);
                await job.BodyEntered.WaitAsync(TestJob.Limit);
                job.Pause();
                job.Finish();
                await job.WaitStatusAsync(JobStatus.Pending);
                break;

            case JobStatus.Aborting:
                job = TestJob.Create(manager, Id, busyBody: true);
                await job.BodyEntered.WaitAsync(TestJob.Limit);
                job.Abort.Armed = true;
                job.Pause();
                job.Fail(new InvalidOperationException("failed on purpose"));
                await job.Abort.Entered.WaitAsync(TestJob.Limit);
                break;

            case JobStatus.Concluded or JobStatus.Null:
                job = TestJob.Create(manager, Id, autoDismiss: state == JobStatus.Null, busyBody: true);
                await job.BodyEntered.WaitAsync(TestJob.Limit);
                job.Pause();
                job.Finish();
                await job.Finished.WaitAsync(TestJob.Limit);
                break;

            default:
                throw new ArgumentOutOfRangeException(nameof(state));
        }

        Assert.True(job.IsUserPaused);
        return job;
    }

    static async Task ApplyAsync(TestJob job, JobVerb verb)
    {
        switch (verb)
        {
            case JobVerb.Cancel:
                await job.CancelAsync();
                break;
            case JobVerb.Pause:
                job.Pause();
                break;
            case JobVerb.Resume:
                job.Resume();
                break;
            case JobVerb.SetSpeed:
                job.SetSpeed(NewSpeed);
                break;
            case JobVerb.Complete:
                job.Complete();
                break;
            case JobVerb.Finalize:
                await job.FinalizeAsync();
                break;
            case JobVerb.Dismiss:
                job.Dismiss();
                break;
        }
    }

    /// <summary>Everything a refused verb must leave as it was.</summary>
    sealed record Snapshot(JobStatus Status, bool Paused, bool UserPaused, bool Busy, long Speed, int Events, int CompleteCalls,
        int Prepares, int Aborts, bool Registered, bool Finished, string? Error)
    {
        public static Snapshot Of(TestJob job, EventLog log) => new(job.Status, job.IsPaused, job.IsUserPaused, job.IsBusy,
            job.Speed, log.Count, job.CompleteCalls, job.Prepare.Calls, job.Abort.Calls, job.Manager.Find(job.Id) is not null,
            job.Finished.IsCompleted, job.Error);
    }

    /// <summary>The verb throws exactly <paramref name="message"/> and changes nothing, then or a little later.</summary>
    static async Task AssertRefusedAsync(TestJob job, EventLog log, JobVerb verb, string message)
    {
        var before = Snapshot.Of(job, log);
        var ex = await Assert.ThrowsAsync<JobException>(() => ApplyAsync(job, verb));
        Assert.Equal(message, ex.Message);
        Assert.False(ex.NotFound);
        Assert.Equal(before, Snapshot.Of(job, log));

        // Anything the refused verb had set in motion would show by now.
        await SettleAsync();
        Assert.Equal(before, Snapshot.Of(job, log));
    }

    /// <summary>Gives a job's tasks a moment to act on something they should not have been told.</summary>
    static Task SettleAsync() => Task.Delay(20);

    static async Task CleanUpAsync(TestJob job)
    {
        job.Prepare.Release();
        job.Abort.Release();
        if (!job.Finished.IsCompleted)
        {
            try
            {
                await job.CancelAsync(force: true);
            }
            catch (JobException)
            {
                // Already ending.
            }
        }

        await job.Finished.WaitAsync(TestJob.Limit);
    }
}
