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
}
