using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// The slow path of the request pipeline: requests the driver cannot take as they are. Unaligned ones are
/// padded to the request alignment (writes by read-modify-write, serialised against overlapping
/// data-changing requests), oversized ones are cut to the driver's maximums. An aligned request that fits
/// never comes here: the request bodies in BlockNode.cs hand it to the driver directly.
/// </summary>
public sealed partial class BlockNode
{
    // Pad buffers for every node: 4 KiB aligned, so they also serve an O_DIRECT driver without a bounce.
    static readonly AlignedBufferPool PadBuffers = new(FileDriver.DirectAlignment);

    readonly SerialisingRanges _serialising = new();

    RequestPadding Padding => new(Math.Max(1, Driver.Limits.RequestAlignment), Driver.Length);

    /// <summary>True when the driver takes the request as it is: aligned, and no longer than <paramref name="max"/>.</summary>
    bool Fits(long offset, long length, long max)
    {
        var alignment = Driver.Limits.RequestAlignment;
        if (alignment <= 1)
        {
            return length <= max;
        }

        return length <= max && offset % alignment == 0 && ((offset + length) % alignment == 0 || offset + length == Driver.Length);
    }

    long TransferPiece => BlockLimits.PieceSize(Driver.Limits.MaxTransfer, Math.Max(1, Driver.Limits.RequestAlignment));

    // ----- Reads -----

    async ValueTask ReadPipelinedAsync(long offset, ReadTarget target, CancellationToken cancellationToken)
    {
        var padding = Padding;
        var piece = TransferPiece;
        var end = offset + target.Length;
        for (var position = offset; position < end;)
        {
            var next = RequestPadding.NextPieceEnd(position, end, piece);
            var part = target.Slice(position - offset, next - position);
            if (padding.IsAligned(position, next))
            {
                await ReadDriverAsync(position, part, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await ReadPaddedAsync(padding, position, part, cancellationToken).ConfigureAwait(false);
            }

            position = next;
        }
    }

    ValueTask ReadDriverAsync(long offset, ReadTarget target, CancellationToken cancellationToken) =>
        target.TryGetSingle(out var buffer)
            ? Driver.ReadAsync(offset, buffer, cancellationToken)
            : Driver.ReadVectorAsync(offset, target.Vector, cancellationToken);

    /// <summary>Reads the aligned blocks around the range into a pad buffer and copies the range out.</summary>
    async ValueTask ReadPaddedAsync(RequestPadding padding, long offset, ReadTarget target, CancellationToken cancellationToken)
    {
        var start = padding.AlignDown(offset);
        var length = (int)(padding.PadEnd(offset + target.Length) - start);
        var pad = PadBuffers.Rent(length);
        try
        {
            var memory = pad.Memory[..length];
            await Driver.ReadAsync(start, memory, cancellationToken).ConfigureAwait(false);
            target.CopyFrom(memory.Span.Slice((int)(offset - start), (int)target.Length));
        }
        finally
        {
            PadBuffers.Return(pad);
        }
    }

    // ----- Writes -----

    /// <summary>
    /// Counts a data-changing request for the serialisation of read-modify-writes. Null means it went in
    /// plain (no tracking, see <see cref="SerialisingRanges"/>); give the result to <see cref="ExitWrite"/>.
    /// </summary>
    async ValueTask<SerialisingRanges.TrackedRange?> EnterWriteAsync(RequestPadding padding, long offset, long end, bool pads, CancellationToken cancellationToken)
    {
        if (!pads && _serialising.TryEnterPlain())
        {
            return null;
        }

        return await _serialising.BeginAsync(padding.AlignDown(offset), padding.PadEnd(end), pads, cancellationToken).ConfigureAwait(false);
    }

    void ExitWrite(SerialisingRanges.TrackedRange? tracked)
    {
        if (tracked is null)
        {
            _serialising.ExitPlain();
        }
        else
        {
            tracked.Dispose();
        }
    }

    async ValueTask WritePipelinedAsync(long offset, WriteSource source, RequestFlags flags, CancellationToken cancellationToken)
    {
        var padding = Padding;
        var end = offset + source.Length;
        var tracked = await EnterWriteAsync(padding, offset, end, !padding.IsAligned(offset, end), cancellationToken).ConfigureAwait(false);
        try
        {
            await WritePiecesAsync(padding, offset, source, flags, cancellationToken).ConfigureAwait(false);
            if (NeedsFlushAfter(flags))
            {
                await Driver.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ExitWrite(tracked);
        }
    }

    /// <summary>Writes [offset, +length) in pieces of at most the max transfer, padding the unaligned ones.</summary>
    async ValueTask WritePiecesAsync(RequestPadding padding, long offset, WriteSource source, RequestFlags flags, CancellationToken cancellationToken)
    {
        var piece = TransferPiece;
        var end = offset + source.Length;
        var driverFlags = DriverWriteFlags(flags);
        for (var position = offset; position < end;)
        {
            var next = RequestPadding.NextPieceEnd(position, end, piece);
            var part = source.Slice(position - offset, next - position);
            if (!padding.IsAligned(position, next))
            {
                await WritePaddedAsync(padding, position, part, driverFlags, cancellationToken).ConfigureAwait(false);
            }
            else if (part.TryGetSingle(out var buffer))
            {
                await Driver.WriteAsync(position, buffer, driverFlags, cancellationToken).ConfigureAwait(false);
            }
            else if (part.IsZeroes)
            {
                // Only the head and tail of a write-zeroes come here, and they are never aligned.
                throw new InvalidOperationException("aligned zeroes go to the driver's write-zeroes");
            }
            else
            {
                await Driver.WriteVectorAsync(position, part.Vector, driverFlags, cancellationToken).ConfigureAwait(false);
            }

            position = next;
        }
    }

    /// <summary>
    /// Read-modify-write of the aligned blocks around the range: the partial first and last block are read,
    /// the data is copied in between, and the whole padded range is written. The caller holds a serialising
    /// range over the blocks, so no other write changes them in between.
    /// </summary>
    async ValueTask WritePaddedAsync(RequestPadding padding, long offset, WriteSource source, RequestFlags driverFlags, CancellationToken cancellationToken)
    {
        var start = padding.AlignDown(offset);
        var end = offset + source.Length;
        var paddedEnd = padding.PadEnd(end);
        var length = (int)(paddedEnd - start);
        var pad = PadBuffers.Rent(length);
        try
        {
            var memory = pad.Memory[..length];
            var headEnd = Math.Min(start + padding.Alignment, paddedEnd);
            if (offset > start)
            {
                await Driver.ReadAsync(start, memory[..(int)(headEnd - start)], cancellationToken).ConfigureAwait(false);
            }

            var tailStart = Math.Max(padding.AlignDown(end), start);
            var tailAlreadyRead = offset > start && tailStart == start;
            if (end < paddedEnd && !tailAlreadyRead)
            {
                await Driver.ReadAsync(tailStart, memory[(int)(tailStart - start)..], cancellationToken).ConfigureAwait(false);
            }

            source.CopyTo(memory.Span.Slice((int)(offset - start), (int)source.Length));
            await Driver.WriteAsync(start, memory, driverFlags, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            PadBuffers.Return(pad);
        }
    }

    // ----- Write-zeroes and discard -----

    /// <summary>
    /// The aligned middle goes to the driver's write-zeroes, in pieces of its max; an unaligned head and tail
    /// become written zeroes (read-modify-write). Those are not "fast", but they are one block each at most,
    /// so a no-fallback request still gets them (QEMU pads the same way).
    /// </summary>
    async ValueTask WriteZeroesPipelinedAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        var padding = Padding;
        var end = offset + length;
        var (middleStart, middleEnd) = padding.AlignedMiddle(offset, end);
        var pads = middleStart > offset || middleEnd < end;
        var tracked = await EnterWriteAsync(padding, offset, end, pads, cancellationToken).ConfigureAwait(false);
        try
        {
            if (middleStart > offset)
            {
                await WritePiecesAsync(padding, offset, WriteSource.Zeroes(middleStart - offset), flags, cancellationToken).ConfigureAwait(false);
            }

            var driverFlags = DriverWriteFlags(flags);
            var piece = BlockLimits.PieceSize(Driver.Limits.MaxWriteZeroes, padding.Alignment);
            for (var position = middleStart; position < middleEnd;)
            {
                var next = RequestPadding.NextPieceEnd(position, middleEnd, piece);
                await Driver.WriteZeroesAsync(position, next - position, driverFlags, cancellationToken).ConfigureAwait(false);
                position = next;
            }

            if (middleEnd < end)
            {
                await WritePiecesAsync(padding, middleEnd, WriteSource.Zeroes(end - middleEnd), flags, cancellationToken).ConfigureAwait(false);
            }

            if (NeedsFlushAfter(flags))
            {
                await Driver.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ExitWrite(tracked);
        }
    }

    /// <summary>
    /// Discard is advisory: only the aligned middle reaches the driver, in pieces of its max; a partial block
    /// at either end keeps its data (QEMU drops the same parts).
    /// </summary>
    async ValueTask DiscardPipelinedAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var padding = Padding;
        var (middleStart, middleEnd) = padding.AlignedMiddle(offset, offset + length);
        if (middleStart == middleEnd)
        {
            return;
        }

        var tracked = await EnterWriteAsync(padding, middleStart, middleEnd, pads: false, cancellationToken).ConfigureAwait(false);
        try
        {
            var piece = BlockLimits.PieceSize(Driver.Limits.MaxDiscard, padding.Alignment);
            for (var position = middleStart; position < middleEnd;)
            {
                var next = RequestPadding.NextPieceEnd(position, middleEnd, piece);
                await Driver.DiscardAsync(position, next - position, cancellationToken).ConfigureAwait(false);
                position = next;
            }
        }
        finally
        {
            ExitWrite(tracked);
        }
    }
}
