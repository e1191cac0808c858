namespace BlockMirror.Jobs.Tests;

/// <summary>
/// A block job the test steers: its body parks until told to become ready, finish or fail, and its
/// prepare and abort steps can be held, so a real job can be put in (and kept in) every state.
/// </summary>
/// <remarks>
/// <para>Two kinds of body. A cooperative body parks in <see cref="Job.YieldAsync"/> (a pause point),
/// as a real job between pieces of work does, so a pause takes effect. A busy body awaits
/// <see cref="Finish"/> or <see cref="Fail"/> without any pause point, so a pause asked for meanwhile stays
/// pending while the job moves on: the way to bring a user-paused job to pending, aborting or concluded.</para>
/// <para>Steer a cooperative body only while it is parked and not paused (<see cref="WaitParkedAsync"/>):
/// a command sets a flag and wakes the body, and a wake-up sent while the body is between its check and
/// its park would be lost.</para>
/// </remarks>
sealed class TestJob : BlockJob
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(10);

    readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly TaskCompletionSource _bodyEntered = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly bool _busyBody;
    readonly bool _supportsComplete;
    int _readyRequested;
    volatile bool _completeRequested;

    public TestJob(JobManager manager, string id, bool autoFinalize = true, bool autoDismiss = true,
        bool supportsComplete = true, bool busyBody = false, long speed = 0)
        : base(manager, id, JobType.Stream, autoFinalize, autoDismiss, speed)
    {
        _busyBody = busyBody;
        _supportsComplete = supportsComplete;
    }

    /// <summary>Held when armed: the job stays in pending-to-concluded (prepare) until released.</summary>
    public Hook Prepare { get; } = new();

    /// <summary>Held when armed: the job stays in aborting until released.</summary>
    public Hook Abort { get; } = new();

    /// <summary>Completes when the body has started (past the pause point before it).</summary>
    public Task BodyEntered => _bodyEntered.Task;

    /// <summary>How often the user's complete reached the job.</summary>
    public int CompleteCalls { get; private set; }

    protected override bool SupportsComplete => _supportsComplete;

    /// <summary>Registers and starts a job (or only registers it, to keep it in created).</summary>
    public static TestJob Create(JobManager manager, string id = "job0", bool start = true, bool autoFinalize = true,
        bool autoDismiss = true, bool supportsComplete = true, bool busyBody = false)
    {
        var job = new TestJob(manager, id, autoFinalize, autoDismiss, supportsComplete, busyBody);
        manager.Register(job);
        if (start)
        {
            job.Start();
        }

        return job;
    }

    /// <summary>Moves the (parked, cooperative) job to READY.</summary>
    public void MakeReady()
    {
        Interlocked.Exchange(ref _readyRequested, 1);
        Enter();
    }

    /// <summary>Lets the body return: success.</summary>
    public void Finish()
    {
        _release.TrySetResult();
        Enter();
    }

    /// <summary>Lets the body throw <paramref name="failure"/>.</summary>
    public void Fail(Exception failure)
    {
        _release.TrySetException(failure);
        Enter();
    }

    protected override void OnComplete()
    {
        CompleteCalls++;
        _completeRequested = true;
        Enter();
    }

    protected override async Task RunAsync()
    {
        _bodyEntered.TrySetResult();
        while (true)
        {
            if (IsCancelled)
            {
                return;
            }

            if (_release.Task.IsCompleted)
            {
                await _release.Task;
                return;
            }

            if (Interlocked.Exchange(ref _readyRequested, 0) != 0)
            {
                TransitionToReady();
            }

            // As a mirror: once ready, a complete or any cancel ends the body successfully.
            if (IsReady && (_completeRequested || IsCancelRequested))
            {
                return;
            }

            if (_busyBody)
            {
                await _release.Task.ContinueWith(static _ => { }, TaskScheduler.Default);
            }
            else
            {
                await YieldAsync();
            }
        }
    }

    protected override Task PrepareAsync() => Prepare.PassAsync();

    protected override Task AbortAsync() => Abort.PassAsync();

    /// <summary>Waits until the body is parked (not busy) and the job is in <paramref name="status"/>.</summary>
    public async Task WaitParkedAsync(JobStatus status)
    {
        using var cts = new CancellationTokenSource(Limit);
        while (IsBusy || Status != status)
        {
            if (cts.IsCancellationRequested)
            {
                throw new TimeoutException($"job never parked in {status.ToWireName()}: now {Status.ToWireName()}, busy {IsBusy}");
            }

            await Task.Delay(1, CancellationToken.None);
        }
    }

    /// <summary>Waits until the job is in <paramref name="status"/>.</summary>
    public async Task WaitStatusAsync(JobStatus status)
    {
        using var cts = new CancellationTokenSource(Limit);
        while (Status != status)
        {
            if (cts.IsCancellationRequested)
            {
                throw new TimeoutException($"job never reached {status.ToWireName()}: now {Status.ToWireName()}");
            }

            await Task.Delay(1, CancellationToken.None);
        }
    }

    /// <summary>A step of the job's end that the test can hold and release.</summary>
    public sealed class Hook
    {
        readonly TaskCompletionSource _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>The step waits for <see cref="Release"/> when it runs.</summary>
        public bool Armed { get; set; }

        /// <summary>Completes when the step has started.</summary>
        public Task Entered => _entered.Task;

        public int Calls { get; private set; }

        public void Release() => _release.TrySetResult();

        public async Task PassAsync()
        {
            Calls++;
            _entered.TrySetResult();
            if (Armed)
            {
                await _release.Task;
            }
        }
    }
}
