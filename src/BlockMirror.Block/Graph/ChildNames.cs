namespace BlockMirror.Block.Graph;

/// <summary>Child roles as QEMU names them.</summary>
public static class ChildNames
{
    /// <summary>The protocol node a format interprets.</summary>
    public const string File = "file";

    /// <summary>The node unallocated ranges of a format fall through to.</summary>
    public const string Backing = "backing";

    /// <summary>blkdebug's filtered child.</summary>
    public const string Image = "image";

    /// <summary>
    /// The child of the filters the jobs insert (mirror-top, commit-top): not <c>backing</c>, so that a node
    /// with a job's filter above it is not taken for a backing file.
    /// </summary>
    public const string Filtered = "filtered";
}
