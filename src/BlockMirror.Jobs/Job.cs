using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;

namespace BlockMirror.Jobs;

/// <summary>
/// A long-running operation with QEMU's job lifecycle: created, running (paused / ready / standby),
/// then waiting, pending, concluded and null on success, or aborting, concluded and null on failure or
/// cancellation. Every state change is checked against <see cref="JobStateTable"/> and announced as
/// JOB_STATUS_CHANGE; every user verb is checked before it does anything.
/// </summary>
/// <remarks>
/// <para>The job body (<see cref="RunAsync"/>) runs on its own task and cooperates: it calls
/// <see cref="PausePointAsync"/>, <see cref="SleepAsync"/> or <see cref="YieldAsync"/> where it may
/// stop, and checks <see cref="IsCancelled"/>. A user pause takes effect at the next pause point; a
/// user verb that needs the body's attention (complete, cancel, resume) wakes it.</para>
/// <para>State lives under the job manager's lock, which is never held across an await. The end of a
/// job (prepare, commit/abort, clean) runs once, serialized by a gate, on whichever task gets there:
/// the job's own, or a user's finalize or forced cancel.</para>
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "SemaphoreSlim needs disposing only when its wait handle is used; the completion gate never uses it.")]
public abstract class Job
{
    readonly SemaphoreSlim _completionGate = new(1, 1);
    readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);

    JobStatus _status = JobStatus.Undefined;
    int _pauseCount = 1;
    bool _paused = true;
    bool _userPaused;
    bool _busy;
    bool _started;
    bool _deferred;
    bool _cancelled;
    bool _forceCancel;
    bool _failed;
    string? _error;
    Exception? _failure;
    TaskCompletionSource? _wake;

    // Enter found the body busy; the next timed sleep is skipped (under Lock).
    bool _enteredWhileBusy;
    ITimer? _sleepTimer;

    protected Job(JobManager manager, string id, JobType type, bool autoFinalize, bool autoDismiss)
    {
        Manager = manager;
        Id = id;
        Type = type;
        AutoFinalize = autoFinalize;
        AutoDismiss = autoDismiss;
    }

    public JobManager Manager { get; }

    public string Id { get; }

    public JobType Type { get; }

    public bool AutoFinalize { get; }

    public bool AutoDismiss { get; }

    protected Lock Lock => Manager.SyncRoot;

    protected TimeProvider Time => Manager.Time;

    public JobStatus Status
    {
        get
        {
            lock (Lock)
            {
                return _status;
            }
        }
    }

    /// <summary>Work done so far, in the job's unit (bytes for block jobs): QMP's <c>offset</c> / <c>current-progress</c>.</summary>
    public long ProgressCurrent => Interlocked.Read(ref _progressCurrent);

    /// <summary>Estimated total work: QMP's <c>len</c> / <c>total-progress</c>. May grow while the job runs.</summary>
    public long ProgressTotal => Interlocked.Read(ref _progressTotal);

    long _progressCurrent;
    long _progressTotal;

    /// <summary>The body is not parked in a sleep, yield or pause.</summary>
    public bool IsBusy
    {
        get
        {
            lock (Lock)
            {
                return _busy;
            }
        }
    }

    /// <summary>A pause has been requested and not yet undone (QMP's <c>paused</c>).</summary>
    public bool IsPaused
    {
        get
        {
            lock (Lock)
            {
                return _pauseCount > 0;
            }
        }
    }

    /// <summary>The user (or a <c>stop</c> error policy) paused the job; only a user resume undoes it.</summary>
    public bool IsUserPaused
    {
        get
        {
            lock (Lock)
            {
                return _userPaused;
            }
        }
    }

    /// <summary>Why the job failed (QMP's <c>error</c>), or null.</summary>
    public string? Error
    {
        get
        {
            lock (Lock)
            {
                return _error;
            }
        }
    }

    /// <summary>The exception behind <see cref="Error"/>, with its full context, or null.</summary>
    public Exception? Failure
    {
        get
        {
            lock (Lock)
            {
                return _failure;
            }
        }
    }

    /// <summary>Completes when the job has concluded (and, with auto-dismiss, gone).</summary>
    public Task Finished => _finished.Task;

    /// <summary>A forced cancel (or any cancel before READY): the body must stop at once.</summary>
    protected bool IsCancelled
    {
        get
        {
            lock (Lock)
            {
                return _forceCancel;
            }
        }
    }

    /// <summary>Any cancel, forced or not.</summary>
    protected bool IsCancelRequested
    {
        get
        {
            lock (Lock)
            {
                return _cancelled;
            }
        }
    }

    /// <summary>Any cancel, forced or not; the caller holds <see cref="Lock"/>.</summary>
    protected bool IsCancelRequestedLocked => _cancelled;

    protected bool IsReady
    {
        get
        {
            lock (Lock)
            {
                return _status is JobStatus.Ready or JobStatus.Standby;
            }
        }
    }

    protected void ProgressAdvance(long done) => Interlocked.Add(ref _progressCurrent, done);

    /// <summary>More work has come in (QEMU's progress_increase_remaining): a guest write copied as it happens.</summary>
    protected void ProgressIncreaseRemaining(long bytes) => Interlocked.Add(ref _progressTotal, bytes);

    /// <summary>Sets how much work remains: total = current + remaining (QEMU's progress_set_remaining).</summary>
    protected void ProgressSetRemaining(long remaining) =>
        Interlocked.Exchange(ref _progressTotal, Interlocked.Read(ref _progressCurrent) + remaining);

    // ----- Body hooks -----

    /// <summary>The job's work. Return to succeed; throw to fail (the exception becomes the job's error).</summary>
    protected abstract Task RunAsync();

    /// <summary>Whether this job can be told to complete (mirror and active commit can).</summary>
    protected virtual bool SupportsComplete => false;

    /// <summary>The user asked to complete. Throw a <see cref="JobException"/> to refuse.</summary>
    protected virtual void OnComplete()
    {
    }

    /// <summary>
    /// A cancel was requested; returns whether it is forced. Called under the lock: record, do not block.
    /// The default treats every cancel as forced, as QEMU does for jobs without a cancel callback.
    /// </summary>
    protected virtual bool OnCancel(bool force) => true;

    /// <summary>After a forced cancel, outside the lock: abort I/O in flight (QEMU's bdrv_cancel_in_flight).</summary>
    protected virtual void OnForceCancelled()
    {
    }

    /// <summary>At a pause point, before parking: finish in-flight work (the mirror waits for its I/O).</summary>
    protected virtual ValueTask OnPauseAsync() => ValueTask.CompletedTask;

    /// <summary>A user resume (block jobs reset their I/O status).</summary>
    protected virtual void OnUserResumeLocked()
    {
    }

    /// <summary>After success, before commit: make the result take effect (the mirror pivots here). Throw to fail.</summary>
    protected virtual Task PrepareAsync() => Task.CompletedTask;

    protected virtual Task CommitAsync() => Task.CompletedTask;

    protected virtual Task AbortAsync() => Task.CompletedTask;

    protected virtual Task CleanAsync() => Task.CompletedTask;

    /// <summary>Event hooks, called under the lock; block jobs emit BLOCK_JOB_* from them.</summary>
    protected virtual void OnReadyLocked()
    {
    }

    protected virtual void OnPendingLocked()
    {
    }

    protected virtual void OnCompletedLocked()
    {
    }

    protected virtual void OnCancelledLocked()
    {
    }

    // ----- State -----

    void TransitionLocked(JobStatus to)
    {
        var from = _status;
        if (!JobStateTable.CanTransition(from, to))
        {
            throw new InvalidOperationException($"job '{Id}': illegal state transition {from.ToWireName()} -> {to.ToWireName()}");
        }

        _status = to;
        if (from != to)
        {
            Manager.PublishLocked(new JobStatusChangeEvent(Id, to));
        }
    }

    void CheckVerbLocked(JobVerb verb)
    {
        if (!JobStateTable.Accepts(_status, verb))
        {
            throw new JobException(JobStateTable.RefusalMessage(Id, _status, verb));
        }
    }

    /// <summary>Checks a verb under the lock; for subclasses adding verbs of their own (set-speed).</summary>
    protected void CheckVerb(JobVerb verb)
    {
        lock (Lock)
        {
            CheckVerbLocked(verb);
        }
    }

    internal void Create()
    {
        lock (Lock)
        {
            TransitionLocked(JobStatus.Created);
        }
    }

    /// <summary>Starts the body on its own task.</summary>
    public void Start()
    {
        lock (Lock)
        {
            if (_started)
            {
                throw new InvalidOperationException($"job '{Id}' was already started");
            }

            _started = true;
            _pauseCount--;
            _busy = true;
            _paused = false;
            TransitionLocked(JobStatus.Running);
        }

        _ = Task.Run(EntryAsync);
    }

    async Task EntryAsync()
    {
        Exception? failure = null;
        try
        {
            // A pause requested before the start takes effect before any work.
            await PausePointAsync().ConfigureAwait(false);
            await RunAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (IsCancelled)
        {
            // Aborted I/O of a forced cancel is the cancel, not a failure.
        }
        catch (Exception ex)
        {
            failure = ex;
        }

        lock (Lock)
        {
            if (failure is not null)
            {
                SetFailedLocked(failure);
            }

            _deferred = true;

            // Not parked, but no longer running its body: nothing for a wake-up to do.
            _busy = false;
        }

        await CompleteRunAsync().ConfigureAwait(false);
    }

    void SetFailedLocked(Exception failure)
    {
        if (_failed)
        {
            return;
        }

        _failed = true;
        _failure = failure;
        _error = failure is BlockIOException io ? io.Errno.Describe() : failure.Message;
    }

    /// <summary>A forced cancel turns into a failure with ECANCELED; a failed job moves to aborting.</summary>
    void UpdateResultLocked()
    {
        if (!_failed && _forceCancel)
        {
            _failed = true;
            _error ??= BlockErrno.ECANCELED.Describe();
        }

        if (_failed)
        {
            TransitionLocked(JobStatus.Aborting);
        }
    }

    /// <summary>QEMU's job_completed: the body has returned.</summary>
    async Task CompleteRunAsync()
    {
        await _completionGate.WaitAsync().ConfigureAwait(false);
        try
        {
            bool failed;
            lock (Lock)
            {
                if (_status is JobStatus.Concluded or JobStatus.Null)
                {
                    return;
                }

                UpdateResultLocked();
                failed = _failed;
                if (!failed)
                {
                    TransitionLocked(JobStatus.Waiting);
                    TransitionLocked(JobStatus.Pending);
                    if (!AutoFinalize)
                    {
                        OnPendingLocked();
                    }
                }
            }

            if (failed)
            {
                await FinalizeSingleAsync().ConfigureAwait(false);
            }
            else if (AutoFinalize)
            {
                await DoFinalizeAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            _completionGate.Release();
        }
    }

    /// <summary>Prepare, then commit or (if prepare failed) abort. Runs under the completion gate.</summary>
    async Task DoFinalizeAsync()
    {
        try
        {
            await PrepareAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            lock (Lock)
            {
                SetFailedLocked(ex);
            }
        }

        await FinalizeSingleAsync().ConfigureAwait(false);
    }

    /// <summary>QEMU's job_finalize_single: commit or abort, clean, the final event, conclude.</summary>
    async Task FinalizeSingleAsync()
    {
        bool failed;
        lock (Lock)
        {
            UpdateResultLocked();
            failed = _failed;
        }

        try
        {
            if (failed)
            {
                await AbortAsync().ConfigureAwait(false);
            }
            else
            {
                await CommitAsync().ConfigureAwait(false);
            }

            await CleanAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // Abort and clean must not fail; if one does, the job still concludes, and says why.
            lock (Lock)
            {
                SetFailedLocked(ex);
            }
        }

        lock (Lock)
        {
            if (_started)
            {
                if (_forceCancel)
                {
                    OnCancelledLocked();
                }
                else
                {
                    OnCompletedLocked();
                }
            }

            TransitionLocked(JobStatus.Concluded);
            if (AutoDismiss || !_started)
            {
                DismissLocked();
            }
        }

        _finished.TrySetResult();
    }

    void DismissLocked()
    {
        _busy = false;
        _paused = false;
        _deferred = true;
        TransitionLocked(JobStatus.Null);
        Manager.RemoveLocked(this);
    }

    // ----- Body primitives -----

    bool ShouldPauseLocked => _pauseCount > 0;

    /// <summary>Wakes the body if it is parked (QEMU's job_enter).</summary>
    protected void Enter()
    {
        lock (Lock)
        {
            EnterLocked();
        }
    }

    void EnterLocked()
    {
        if (_busy)
        {
            // The body is running: it may be about to sleep for a delay computed before this call (a speed
            // raised by set-speed). Its next timed sleep is skipped instead (see SleepAsync).
            _enteredWhileBusy = true;
        }

        if (!_started || _deferred || _busy)
        {
            return;
        }

        _sleepTimer?.Dispose();
        _sleepTimer = null;
        _busy = true;
        var wake = _wake;
        _wake = null;
        wake?.TrySetResult();
    }

    /// <summary>Parks the body (under the lock) until <see cref="Enter"/>, or the timeout if given.</summary>
    Task ParkLocked(TimeSpan? timeout)
    {
        _busy = false;
        _wake = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (timeout is { } delay)
        {
            _sleepTimer = Time.CreateTimer(static state => ((Job)state!).Enter(), this, delay, Timeout.InfiniteTimeSpan);
        }

        return _wake.Task;
    }

    /// <summary>Where the body may be paused: parks while a pause is requested (unless cancelled).</summary>
    protected async ValueTask PausePointAsync()
    {
        lock (Lock)
        {
            if (!ShouldPauseLocked || _forceCancel)
            {
                return;
            }
        }

        await OnPauseAsync().ConfigureAwait(false);

        Task parked;
        JobStatus resumeTo;
        lock (Lock)
        {
            if (!ShouldPauseLocked || _forceCancel)
            {
                return;
            }

            resumeTo = _status;
            TransitionLocked(resumeTo == JobStatus.Ready ? JobStatus.Standby : JobStatus.Paused);
            _paused = true;
            parked = ParkLocked(null);
        }

        // Only a resume or a cancel ends a pause. Other verbs wake the body too (set-speed, and complete in
        // standby), and QEMU's callers avoid waking a paused job; here the pause point itself parks again
        // while the pause still stands, so no such wake-up can let a paused job run on.
        while (true)
        {
            await parked.ConfigureAwait(false);
            lock (Lock)
            {
                if (ShouldPauseLocked && !_forceCancel)
                {
                    parked = ParkLocked(null);
                    continue;
                }

                _paused = false;
                TransitionLocked(resumeTo);
                return;
            }
        }
    }

    /// <summary>Sleeps for <paramref name="delay"/> unless woken or cancelled; then a pause point.</summary>
    /// <remarks>
    /// A zero delay only yields the thread: a timer cannot fire sooner than the system tick (about a
    /// millisecond), which would throttle a job that sleeps zero between every piece of work.
    /// </remarks>
    protected async ValueTask SleepAsync(TimeSpan delay)
    {
        Task? parked = null;
        lock (Lock)
        {
            if (_forceCancel)
            {
                return;
            }

            if (!ShouldPauseLocked && delay > TimeSpan.Zero && !_enteredWhileBusy)
            {
                parked = ParkLocked(delay);
            }

            _enteredWhileBusy = false;
        }

        if (parked is not null)
        {
            await parked.ConfigureAwait(false);
        }
        else
        {
            await Task.Yield();
        }

        await PausePointAsync().ConfigureAwait(false);
    }

    /// <summary>Parks until woken (by complete, cancel, resume); then a pause point.</summary>
    protected async ValueTask YieldAsync()
    {
        Task? parked = null;
        lock (Lock)
        {
            if (_forceCancel)
            {
                return;
            }

            if (!ShouldPauseLocked)
            {
                parked = ParkLocked(null);
            }
        }

        if (parked is not null)
        {
            await parked.ConfigureAwait(false);
        }

        await PausePointAsync().ConfigureAwait(false);
    }

    /// <summary>Moves to READY (and emits BLOCK_JOB_READY for block jobs).</summary>
    protected void TransitionToReady()
    {
        lock (Lock)
        {
            TransitionLocked(JobStatus.Ready);
            OnReadyLocked();
        }
    }

    /// <summary>Pauses without the user's verb (a <c>stop</c> error policy); the user sees it as a user pause.</summary>
    protected void PauseAsUserLocked()
    {
        if (!_userPaused)
        {
            _pauseCount++;
            _userPaused = true;
            if (!_paused)
            {
                EnterLocked();
            }
        }
    }

    // ----- User verbs -----

    /// <summary>QMP job-pause / block-job-pause.</summary>
    public void Pause()
    {
        lock (Lock)
        {
            CheckVerbLocked(JobVerb.Pause);
            if (_userPaused)
            {
                throw new JobException("Job is already paused");
            }

            _userPaused = true;
            _pauseCount++;
            if (!_paused)
            {
                EnterLocked();
            }
        }
    }

    /// <summary>QMP job-resume / block-job-resume.</summary>
    public void Resume()
    {
        lock (Lock)
        {
            if (!_userPaused || _pauseCount <= 0)
            {
                throw new JobException("Can't resume a job that was not paused");
            }

            CheckVerbLocked(JobVerb.Resume);
            OnUserResumeLocked();
            _userPaused = false;
            ResumeLocked();
        }
    }

    void ResumeLocked()
    {
        _pauseCount--;
        if (_pauseCount == 0 && _sleepTimer is null)
        {
            EnterLocked();
        }
    }

    /// <summary>QMP job-complete / block-job-complete.</summary>
    public void Complete()
    {
        lock (Lock)
        {
            CheckVerbLocked(JobVerb.Complete);
            if (_cancelled || !SupportsComplete)
            {
                throw new JobException($"The active block job '{Id}' cannot be completed");
            }
        }

        OnComplete();
    }

    /// <summary>
    /// QMP job-cancel / block-job-cancel. Before READY every cancel stops at once; after READY a cancel
    /// that is not forced lets the job finish its final sync (it then reports COMPLETED).
    /// </summary>
    public Task CancelAsync(bool force = false) => CancelCoreAsync(force, checkVerb: true);

    /// <summary>
    /// Ends the job whatever its state, as QEMU's job_cancel_sync_all does at shutdown: a forced cancel
    /// without the verb check, so a pending job aborts and a concluded one is dismissed; then waits for the
    /// end. Every state change on the way is announced, as it is for a user's cancel.
    /// </summary>
    public async Task CancelForShutdownAsync()
    {
        await CancelCoreAsync(force: true, checkVerb: false).ConfigureAwait(false);
        await Finished.ConfigureAwait(false);
        lock (Lock)
        {
            if (_status == JobStatus.Concluded)
            {
                DismissLocked();
            }
        }
    }

    async Task CancelCoreAsync(bool force, bool checkVerb)
    {
        bool runEnd = false;
        bool forced;
        lock (Lock)
        {
            if (checkVerb)
            {
                CheckVerbLocked(JobVerb.Cancel);
            }
            else if (_status is JobStatus.Null)
            {
                return;
            }

            if (_status == JobStatus.Concluded)
            {
                DismissLocked();
                return;
            }

            force = OnCancel(force);
            if (_userPaused)
            {
                OnUserResumeLocked();
                _userPaused = false;
                _pauseCount--;
            }

            // A soft cancel of a job whose body already returned changes nothing.
            if (force || !_deferred)
            {
                _cancelled = true;
                _forceCancel |= force;
            }

            forced = _forceCancel;
            if (!_started)
            {
                runEnd = true;
            }
            else if (_deferred)
            {
                runEnd = _forceCancel;
            }
            else
            {
                EnterLocked();
            }
        }

        if (forced)
        {
            OnForceCancelled();
        }

        if (runEnd)
        {
            await AbortEndAsync().ConfigureAwait(false);
        }
    }

    /// <summary>A forced cancel of a job whose body is done (e.g. pending): abort under the gate.</summary>
    async Task AbortEndAsync()
    {
        await _completionGate.WaitAsync().ConfigureAwait(false);
        try
        {
            lock (Lock)
            {
                if (_status is JobStatus.Concluded or JobStatus.Null)
                {
                    return;
                }

                _deferred = true;
            }

            await FinalizeSingleAsync().ConfigureAwait(false);
        }
        finally
        {
            _completionGate.Release();
        }
    }

    /// <summary>QMP job-finalize / block-job-finalize (only without auto-finalize, in state pending).</summary>
    public async Task FinalizeAsync()
    {
        lock (Lock)
        {
            CheckVerbLocked(JobVerb.Finalize);
        }

        await _completionGate.WaitAsync().ConfigureAwait(false);
        try
        {
            lock (Lock)
            {
                // Re-check under the gate: a forced cancel may have ended the job meanwhile.
                CheckVerbLocked(JobVerb.Finalize);
            }

            await DoFinalizeAsync().ConfigureAwait(false);
        }
        finally
        {
            _completionGate.Release();
        }
    }

    /// <summary>QMP job-dismiss / block-job-dismiss (only without auto-dismiss, in state concluded).</summary>
    public void Dismiss()
    {
        lock (Lock)
        {
            CheckVerbLocked(JobVerb.Dismiss);
            DismissLocked();
        }
    }

    public override string ToString() => $"{Type.ToWireName()} job '{Id}' ({Status.ToWireName()})";
}
