using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Raw;

/// <summary>
/// QEMU's guard for raw images whose format was probed: a write that would make the image's first
/// <see cref="ImageFormatProbe.Size"/> bytes announce an image format is refused with EPERM. Without it a
/// guest (or a mirror of a qcow2 source onto such a target) writes a qcow2 header into a raw disk, and the
/// next probe opens that disk as a qcow2 whose backing file can name any file on the host.
/// </summary>
/// <remarks>
/// Only requests that reach into the first block pay for the check. QEMU raises a probed raw node's request
/// alignment to 512 so that such a write always covers the whole block; without that, a partial write is
/// judged on the block as it would read afterwards (its current bytes with the write laid over them).
/// </remarks>
sealed class RawProbeGuard(NodeEdge file, string nodeName)
{
    /// <summary>Refuses a write of <paramref name="buffers"/> at <paramref name="offset"/> (below the block's end) that would make the block announce a format.</summary>
    public async ValueTask CheckWriteAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, CancellationToken cancellationToken)
    {
        var block = await BlockAfterAsync(offset, buffers.Sum(b => (long)b.Length), cancellationToken).ConfigureAwait(false);
        if (block is null)
        {
            return;
        }

        var at = (int)offset;
        foreach (var buffer in buffers)
        {
            if (at >= block.Length)
            {
                break;
            }

            var part = buffer.Span[..Math.Min(buffer.Length, block.Length - at)];
            part.CopyTo(block.AsSpan(at));
            at += part.Length;
        }

        Check(block, offset, buffers.Sum(b => (long)b.Length), BlockOperation.Write);
    }

    /// <summary>Refuses zeroing (or discarding) a range that starts in the block when the block would then announce a format.</summary>
    public async ValueTask CheckZeroesAsync(long offset, long length, BlockOperation operation, CancellationToken cancellationToken)
    {
        var block = await BlockAfterAsync(offset, length, cancellationToken).ConfigureAwait(false);
        if (block is null)
        {
            return;
        }

        block.AsSpan((int)offset, (int)Math.Min(length, block.Length - offset)).Clear();
        Check(block, offset, length, operation);
    }

    /// <summary>
    /// The first block as it reads now (null where the request cannot be judged here: a request the file's
    /// alignment refuses anyway); the caller lays the request over it.
    /// </summary>
    async ValueTask<byte[]?> BlockAfterAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var size = (int)Math.Min(ImageFormatProbe.Size, file.Node.Length);
        var block = new byte[size];
        if (offset == 0 && length >= size)
        {
            return block;
        }

        if (file.Node.Limits.RequestAlignment > 1)
        {
            return null;
        }

        await file.ReadAsync(0, block, cancellationToken).ConfigureAwait(false);
        return block;
    }

    void Check(ReadOnlySpan<byte> block, long offset, long length, BlockOperation operation)
    {
        var format = ImageFormatProbe.Detect(block);
        if (format != RawDriver.Name)
        {
            throw BlockIOException.Create(BlockErrno.EPERM, nodeName, operation, offset, length,
                $"the image's format was probed as raw, and this request would make its first block a {format} header");
        }
    }
}
