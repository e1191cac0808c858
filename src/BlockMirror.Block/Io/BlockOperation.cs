namespace BlockMirror.Block.Io;

/// <summary>The kinds of request a node serves; used in errors, fault rules and statistics.</summary>
public enum BlockOperation
{
    Read,
    Write,
    WriteZeroes,
    Discard,
    Flush,
    BlockStatus,
    Truncate,
}

/// <summary>Wire spellings of <see cref="BlockOperation"/>, as QEMU writes them (blkdebug iotype, QMP).</summary>
public static class BlockOperationNames
{
    public static string ToWireName(this BlockOperation operation) => operation switch
    {
        BlockOperation.Read => "read",
        BlockOperation.Write => "write",
        BlockOperation.WriteZeroes => "write-zeroes",
        BlockOperation.Discard => "discard",
        BlockOperation.Flush => "flush",
        BlockOperation.BlockStatus => "block-status",
        BlockOperation.Truncate => "truncate",
        _ => throw new ArgumentOutOfRangeException(nameof(operation)),
    };

    public static bool TryParse(string name, out BlockOperation operation)
    {
        foreach (var candidate in Enum.GetValues<BlockOperation>())
        {
            if (candidate.ToWireName() == name)
            {
                operation = candidate;
                return true;
            }
        }

        operation = default;
        return false;
    }

    /// <summary>True for the operations that change data and so mark dirty bitmaps.</summary>
    public static bool ChangesData(this BlockOperation operation) =>
        operation is BlockOperation.Write or BlockOperation.WriteZeroes or BlockOperation.Discard;
}
