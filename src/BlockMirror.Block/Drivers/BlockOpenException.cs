using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// A node could not be opened: a missing file, a bad option, a corrupt image header. Thrown before the
/// node exists, so nothing was added to the graph and nothing was written.
/// </summary>
public sealed class BlockOpenException(string message, BlockErrno errno = BlockErrno.EINVAL, Exception? inner = null)
    : IOException(message, inner)
{
    public BlockErrno Errno { get; } = errno;
}
