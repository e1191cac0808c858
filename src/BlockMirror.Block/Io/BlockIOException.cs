namespace BlockMirror.Block.Io;

/// <summary>
/// A failed block request. Carries the errno (error policies and NBD replies depend on it), the node,
/// the operation and the byte range, so every message says what failed and where.
/// </summary>
public sealed class BlockIOException : IOException
{
    public BlockIOException(BlockErrno errno, string nodeName, BlockOperation operation, long offset, long length, string message, Exception? inner = null)
        : base(message, inner)
    {
        Errno = errno;
        NodeName = nodeName;
        Operation = operation;
        Offset = offset;
        Length = length;
        HResult = (int)errno;
    }

    /// <summary>The errno value; <c>enospc</c> policies and NBD error replies read it.</summary>
    public BlockErrno Errno { get; }

    /// <summary>The node the request was sent to.</summary>
    public string NodeName { get; }

    public BlockOperation Operation { get; }

    public long Offset { get; }

    public long Length { get; }

    /// <summary>
    /// What went wrong, without the node and range (for QMP commands that answer in QEMU's words, which name
    /// neither); null when the exception was not built by <see cref="Create"/>.
    /// </summary>
    public string? Detail { get; private init; }

    /// <summary>Builds the usual message shape: <c>node 'n': write at offset 4096 length 512: ...</c>.</summary>
    public static BlockIOException Create(BlockErrno errno, string nodeName, BlockOperation operation, long offset, long length, string detail, Exception? inner = null) =>
        new(errno, nodeName, operation, offset, length,
            $"node '{nodeName}': {operation.ToWireName()} at offset {offset} length {length}: {detail}", inner)
        {
            Detail = detail,
        };
}
