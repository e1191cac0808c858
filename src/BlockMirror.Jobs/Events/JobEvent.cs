namespace BlockMirror.Jobs.Events;

/// <summary>
/// An event a job emits, with QEMU's name and payload fields. Hosts (the QMP monitor, the CLI) subscribe
/// through <see cref="JobEventBus"/> and render them; field names follow qapi/job.json and block-core.json.
/// </summary>
public abstract record JobEvent
{
    /// <summary>The QMP event name, e.g. <c>BLOCK_JOB_READY</c>.</summary>
    public abstract string Name { get; }

    /// <summary>When it happened (wall clock, from the job manager's time provider).</summary>
    public DateTimeOffset Timestamp { get; init; }
}

/// <summary>JOB_STATUS_CHANGE: <c>{ id, status }</c>.</summary>
public sealed record JobStatusChangeEvent(string Id, JobStatus Status) : JobEvent
{
    public override string Name => "JOB_STATUS_CHANGE";
}

/// <summary>Progress fields shared by BLOCK_JOB_READY, _COMPLETED and _CANCELLED.</summary>
public abstract record BlockJobProgressEvent(JobType Type, string Device, long Len, long Offset, long Speed) : JobEvent;

/// <summary>BLOCK_JOB_READY: the job may be completed.</summary>
public sealed record BlockJobReadyEvent(JobType Type, string Device, long Len, long Offset, long Speed)
    : BlockJobProgressEvent(Type, Device, Len, Offset, Speed)
{
    public override string Name => "BLOCK_JOB_READY";
}

/// <summary>BLOCK_JOB_COMPLETED: finished; <see cref="Error"/> is set when it failed.</summary>
public sealed record BlockJobCompletedEvent(JobType Type, string Device, long Len, long Offset, long Speed, string? Error)
    : BlockJobProgressEvent(Type, Device, Len, Offset, Speed)
{
    public override string Name => "BLOCK_JOB_COMPLETED";
}

/// <summary>BLOCK_JOB_CANCELLED: stopped before its work was done.</summary>
public sealed record BlockJobCancelledEvent(JobType Type, string Device, long Len, long Offset, long Speed)
    : BlockJobProgressEvent(Type, Device, Len, Offset, Speed)
{
    public override string Name => "BLOCK_JOB_CANCELLED";
}

/// <summary>BLOCK_JOB_ERROR: a request failed; <c>operation</c> is read or write, <c>action</c> what the policy did.</summary>
public sealed record BlockJobErrorEvent(string Device, bool IsRead, BlockErrorAction Action) : JobEvent
{
    public override string Name => "BLOCK_JOB_ERROR";

    public string Operation => IsRead ? "read" : "write";
}

/// <summary>BLOCK_JOB_PENDING: waiting for block-job-finalize (only without auto-finalize).</summary>
public sealed record BlockJobPendingEvent(JobType Type, string Id) : JobEvent
{
    public override string Name => "BLOCK_JOB_PENDING";
}
