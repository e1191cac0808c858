namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>Reads of metadata from the file under a qcow2 image, shared by the driver and the checker.</summary>
internal static class Qcow2FileReads
{
    /// <summary>
    /// Fills <paramref name="buffer"/> from <paramref name="offset"/>; the part past the end of the file reads
    /// as zeroes. A range the file node cannot take as it is (with O_DIRECT it wants whole blocks, and a table
    /// of l1_size entries is rarely that) is read through a block-aligned copy.
    /// </summary>
    public static async ValueTask ReadClampedAsync(Func<long, Memory<byte>, CancellationToken, ValueTask> read, long fileLength, int alignment,
        long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var available = (int)Math.Clamp(fileLength - offset, 0, buffer.Length);
        if (available > 0)
        {
            var a = Math.Max(1, alignment);
            var end = offset + available;
            if (offset % a == 0 && (end % a == 0 || end == fileLength))
            {
                await read(offset, buffer[..available], cancellationToken).ConfigureAwait(false);
            }
            else
            {
                var from = offset / a * a;
                var to = Math.Min(fileLength, (end + a - 1) / a * a);
                var bounce = new byte[to - from];
                await read(from, bounce, cancellationToken).ConfigureAwait(false);
                bounce.AsMemory((int)(offset - from), available).CopyTo(buffer);
            }
        }

        buffer.Span[available..].Clear();
    }
}
