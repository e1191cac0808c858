namespace BlockMirror.Jobs;

/// <summary>Job states, in QEMU's order (the columns of <see cref="JobStateTable"/>).</summary>
public enum JobStatus
{
    Undefined,
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
}

/// <summary>Verbs a user applies to a job (the rows of <see cref="JobStateTable"/>).</summary>
public enum JobVerb
{
    Cancel,
    Pause,
    Resume,
    SetSpeed,
    Complete,
    Finalize,
    Dismiss,

    /// <summary>block-job-change (QEMU 8.2); accepted where set-speed is.</summary>
    Change,
}

/// <summary>The kinds of job, as QMP's JobType spells them.</summary>
public enum JobType
{
    Commit,
    Stream,
    Mirror,
    Backup,
    Create,
}

/// <summary>QMP spellings.</summary>
public static class JobNames
{
    public static string ToWireName(this JobStatus status) => status switch
    {
        JobStatus.Undefined => "undefined",
        JobStatus.Created => "created",
        JobStatus.Running => "running",
        JobStatus.Paused => "paused",
        JobStatus.Ready => "ready",
        JobStatus.Standby => "standby",
        JobStatus.Waiting => "waiting",
        JobStatus.Pending => "pending",
        JobStatus.Aborting => "aborting",
        JobStatus.Concluded => "concluded",
        JobStatus.Null => "null",
        _ => throw new ArgumentOutOfRangeException(nameof(status)),
    };

    public static string ToWireName(this JobVerb verb) => verb switch
    {
        JobVerb.Cancel => "cancel",
        JobVerb.Pause => "pause",
        JobVerb.Resume => "resume",
        JobVerb.SetSpeed => "set-speed",
        JobVerb.Complete => "complete",
        JobVerb.Finalize => "finalize",
        JobVerb.Dismiss => "dismiss",
        JobVerb.Change => "change",
        _ => throw new ArgumentOutOfRangeException(nameof(verb)),
    };

    public static string ToWireName(this JobType type) => type switch
    {
        JobType.Commit => "commit",
        JobType.Stream => "stream",
        JobType.Mirror => "mirror",
        JobType.Backup => "backup",
        JobType.Create => "create",
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };
}
