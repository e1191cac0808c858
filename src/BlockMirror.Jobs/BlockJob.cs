using Microsoft.Extensions.Logging;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;

namespace BlockMirror.Jobs;

/// <summary>
/// A job that works on block nodes (QEMU's BlockJob): a speed limit, an I/O status, error policies, and
/// the BLOCK_JOB_* events whose <c>device</c> is the job id.
/// </summary>
public abstract class BlockJob : Job
{
    IoStatus _ioStatus = IoStatus.Ok;
    long _ignoredErrors;

    protected BlockJob(JobManager manager, string id, JobType type, bool autoFinalize, bool autoDismiss, long speed)
        : base(manager, id, type, autoFinalize, autoDismiss)
    {
        if (speed < 0)
        {
            throw new JobException("Invalid parameter 'speed'");
        }

        Limiter = new RateLimiter(manager.Time);
        Limiter.SetSpeed(speed);
    }

    /// <summary>The job's copy speed limit; the body asks it how long to wait after each piece of work.</summary>
    protected RateLimiter Limiter { get; }

    /// <summary>Bytes per second, 0 for unlimited.</summary>
    public long Speed => Limiter.Speed;

    public IoStatus IoStatus
    {
        get
        {
            lock (Lock)
            {
                return _ioStatus;
            }
        }
    }

    /// <summary>Failed requests that an <c>ignore</c> policy let pass.</summary>
    public long IgnoredErrors => Interlocked.Read(ref _ignoredErrors);

    /// <summary>The nodes this job works on; other jobs may not use them while it runs.</summary>
    internal virtual IEnumerable<Block.Graph.BlockNode> UsedNodes => [];

    /// <summary>QMP block-job-set-speed / the speed verb.</summary>
    public void SetSpeed(long speed)
    {
        CheckVerb(JobVerb.SetSpeed);
        if (speed < 0)
        {
            throw new JobException("Invalid parameter 'speed'");
        }

        var old = Limiter.Speed;
        Limiter.SetSpeed(speed);

        // A faster (or unlimited) job should not sit out a sleep computed for the old speed.
        if (speed == 0 || speed > old)
        {
            Enter();
        }
    }

    /// <summary>
    /// block-job-change for a job with nothing to change (QEMU's block_job_change_locked when the driver has
    /// no change callback): refused, after the verb check.
    /// </summary>
    public void RefuseChange()
    {
        CheckVerb(JobVerb.Change);
        throw new JobException("Job type does not support change");
    }

    /// <summary>
    /// Applies an error policy to a failed request (QEMU's block_job_error_action): emits BLOCK_JOB_ERROR,
    /// and for <c>stop</c> pauses the job as if the user had, recording the I/O status.
    /// </summary>
    /// <remarks>
    /// Once the user has asked to cancel the job, an error is reported whatever the policy: <c>ignore</c> would
    /// try again and <c>stop</c> would wait for a resume, and against a target that is gone (a dead NBD
    /// destination) a soft-cancelled READY mirror, which must still converge, would never end. QEMU 7.2 loops
    /// there, emitting BLOCK_JOB_ERROR without end; a deliberate difference.
    /// </remarks>
    protected BlockErrorAction HandleIoError(BlockdevOnError policy, bool isRead, BlockErrno errno)
    {
        var action = ErrorPolicy.Decide(policy, errno);
        lock (Lock)
        {
            if (IsCancelRequestedLocked)
            {
                action = BlockErrorAction.Report;
            }

            if (Manager.Logger.IsEnabled(LogLevel.Warning))
            {
                JobLog.IoError(Manager.Logger, Id, isRead ? "read" : "write", errno.Describe(), action.ToWireName());
            }

            Manager.PublishLocked(new BlockJobErrorEvent(Id, isRead, action));
            switch (action)
            {
                case BlockErrorAction.Stop:
                    PauseAsUserLocked();
                    if (_ioStatus == IoStatus.Ok)
                    {
                        _ioStatus = errno == BlockErrno.ENOSPC ? IoStatus.Nospace : IoStatus.Failed;
                    }

                    break;
                case BlockErrorAction.Ignore:
                    _ignoredErrors++;
                    break;
            }
        }

        return action;
    }

    protected override void OnUserResumeLocked() => _ioStatus = IoStatus.Ok;

    protected override void OnReadyLocked() =>
        Manager.PublishLocked(new BlockJobReadyEvent(Type, Id, ProgressTotal, ProgressCurrent, Speed));

    protected override void OnPendingLocked() =>
        Manager.PublishLocked(new BlockJobPendingEvent(Type, Id));

    protected override void OnCompletedLocked() =>
        Manager.PublishLocked(new BlockJobCompletedEvent(Type, Id, ProgressTotal, ProgressCurrent, Speed, ErrorLocked));

    protected override void OnCancelledLocked() =>
        Manager.PublishLocked(new BlockJobCancelledEvent(Type, Id, ProgressTotal, ProgressCurrent, Speed));

    string? ErrorLocked => Error;

    /// <summary>What query-block-jobs reports.</summary>
    public BlockJobInfo GetInfo()
    {
        lock (Lock)
        {
            return new BlockJobInfo(Type, Id, ProgressTotal, ProgressCurrent, IsBusy, IsPaused, Speed, _ioStatus,
                Status is JobStatus.Ready or JobStatus.Standby, Status, AutoFinalize, AutoDismiss, Error);
        }
    }
}

/// <summary>One entry of query-block-jobs (BlockJobInfo in block-core.json).</summary>
public sealed record BlockJobInfo(
    JobType Type,
    string Device,
    long Len,
    long Offset,
    bool Busy,
    bool Paused,
    long Speed,
    IoStatus IoStatus,
    bool Ready,
    JobStatus Status,
    bool AutoFinalize,
    bool AutoDismiss,
    string? Error);
