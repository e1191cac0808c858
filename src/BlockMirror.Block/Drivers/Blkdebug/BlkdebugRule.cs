using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>
/// One fault-injection rule: which requests it matches, what error it returns, and when it fires.
/// </summary>
/// <param name="Operation">The operation it matches; null matches every operation.</param>
/// <param name="Offset">Start of the byte range it matches; a request matches if it overlaps the range.</param>
/// <param name="Length">Length of that range; null means "to the end of the device".</param>
/// <param name="Errno">The error the failed request reports.</param>
/// <param name="After">How many matching requests pass before the rule fires (0 = the first one fails).</param>
/// <param name="Once">Fire once and then stay quiet; otherwise every matching request after <paramref name="After"/> fails.</param>
public sealed record BlkdebugRule(
    BlockOperation? Operation = null,
    long Offset = 0,
    long? Length = null,
    BlockErrno Errno = BlockErrno.EIO,
    long After = 0,
    bool Once = false)
{
    /// <summary>True when a request of this kind and range is one this rule is about.</summary>
    public bool Matches(BlockOperation operation, long offset, long length)
    {
        if (Operation is { } op && op != operation)
        {
            return false;
        }

        // Flush has no range: a flush rule matches every flush whatever its range says.
        if (operation == BlockOperation.Flush)
        {
            return true;
        }

        var end = Length is { } l ? Offset + l : long.MaxValue;
        var requestEnd = length == 0 ? offset + 1 : offset + length;
        return offset < end && Offset < requestEnd;
    }

    public override string ToString() =>
        $"{(Operation?.ToWireName() ?? "any")} [{Offset}, {(Length is { } l ? (Offset + l).ToString() : "end")}) -> {Errno}" +
        (After > 0 ? $" after {After}" : "") + (Once ? " once" : "");
}
