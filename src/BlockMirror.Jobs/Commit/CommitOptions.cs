namespace BlockMirror.Jobs.Commit;

/// <summary>A commit job's options, with QMP's names and defaults (block-commit).</summary>
public sealed record CommitOptions
{
    /// <summary><c>job-id</c>.</summary>
    public required string JobId { get; init; }

    /// <summary><c>speed</c> in bytes per second; 0 is unlimited.</summary>
    public long Speed { get; init; }

    /// <summary><c>on-error</c>: one policy for reads of the top and writes to the base.</summary>
    public BlockdevOnError OnError { get; init; } = BlockdevOnError.Report;

    /// <summary>
    /// <c>backing-file</c>: the name written into the header of the image above the top once the top is
    /// gone; null writes the base's file name as it was opened.
    /// </summary>
    public string? BackingFile { get; init; }

    /// <summary><c>auto-finalize</c>.</summary>
    public bool AutoFinalize { get; init; } = true;

    /// <summary><c>auto-dismiss</c>.</summary>
    public bool AutoDismiss { get; init; } = true;

    /// <summary><c>filter-node-name</c>: the name of the commit-top node; generated when null.</summary>
    public string? FilterNodeName { get; init; }
}
