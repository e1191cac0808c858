using BlockMirror.Block.Io;

namespace BlockMirror.Jobs;

/// <summary>What a job does when a request fails (QMP's BlockdevOnError).</summary>
public enum BlockdevOnError
{
    /// <summary>Fail the job with the error.</summary>
    Report,

    /// <summary>
    /// Carry on, and try the failed range again (a mirror leaves it dirty, a commit repeats the step): an
    /// error is never a reason to leave data behind.
    /// </summary>
    Ignore,

    /// <summary>Stop on ENOSPC, report anything else.</summary>
    Enospc,

    /// <summary>Pause the job; the user resumes it after fixing the cause.</summary>
    Stop,

    /// <summary>As <see cref="Enospc"/> for jobs.</summary>
    Auto,
}

/// <summary>What was done about one failed request (QMP's BlockErrorAction).</summary>
public enum BlockErrorAction
{
    Ignore,
    Report,
    Stop,
}

/// <summary>A block job's I/O status (QMP's BlockDeviceIoStatus).</summary>
public enum IoStatus
{
    Ok,
    Failed,
    Nospace,
}

/// <summary>Policy decisions and wire names.</summary>
public static class ErrorPolicy
{
    /// <summary>The action a policy takes for an errno (QEMU's block_job_error_action).</summary>
    public static BlockErrorAction Decide(BlockdevOnError policy, BlockErrno errno) => policy switch
    {
        BlockdevOnError.Report => BlockErrorAction.Report,
        BlockdevOnError.Ignore => BlockErrorAction.Ignore,
        BlockdevOnError.Stop => BlockErrorAction.Stop,
        BlockdevOnError.Enospc or BlockdevOnError.Auto => errno == BlockErrno.ENOSPC ? BlockErrorAction.Stop : BlockErrorAction.Report,
        _ => throw new ArgumentOutOfRangeException(nameof(policy)),
    };

    public static string ToWireName(this BlockdevOnError policy) => policy switch
    {
        BlockdevOnError.Report => "report",
        BlockdevOnError.Ignore => "ignore",
        BlockdevOnError.Enospc => "enospc",
        BlockdevOnError.Stop => "stop",
        BlockdevOnError.Auto => "auto",
        _ => throw new ArgumentOutOfRangeException(nameof(policy)),
    };

    public static bool TryParse(string text, out BlockdevOnError policy)
    {
        foreach (var candidate in Enum.GetValues<BlockdevOnError>())
        {
            if (candidate.ToWireName() == text)
            {
                policy = candidate;
                return true;
            }
        }

        policy = default;
        return false;
    }

    public static string ToWireName(this BlockErrorAction action) => action switch
    {
        BlockErrorAction.Ignore => "ignore",
        BlockErrorAction.Report => "report",
        BlockErrorAction.Stop => "stop",
        _ => throw new ArgumentOutOfRangeException(nameof(action)),
    };

    public static string ToWireName(this IoStatus status) => status switch
    {
        IoStatus.Ok => "ok",
        IoStatus.Failed => "failed",
        IoStatus.Nospace => "nospace",
        _ => throw new ArgumentOutOfRangeException(nameof(status)),
    };
}
