using BlockMirror.Block.Bitmaps;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// What the mirror knows of its target's zeroes (QEMU 10.1's zero_bitmap): one bit per chunk, set when the
/// target is known to read zeroes over the whole chunk. A zero range of the source whose chunks are all set
/// needs no request at all, so a sparse target stays sparse without a write-zeroes that would allocate it.
/// </summary>
/// <remarks>
/// <para>A bit is only ever set on evidence (the target's block status at the start, the user's
/// <c>target-is-zero</c>, a write-zeroes that succeeded) and cleared before anything that may put other
/// bytes there (a copy, a discard, a guest write) is sent. A clear bit means "not known", never "data": the
/// worst a clear bit costs is a write-zeroes that was not needed.</para>
/// <para>Rounding: a range whose bits are cleared or tested covers every chunk it touches; a range that is
/// marked zero covers only the chunks it fills whole (and the short last chunk of the device when it
/// reaches the end), so a partial write-zeroes never marks a chunk whose other bytes are unknown.</para>
/// <para>Not thread-safe: the engine changes it under its lock, and only for chunks the caller owns in
/// the in-flight map, so a bit never changes under an operation that looked at it. Memory: one bit per
/// chunk, as the in-flight map.</para>
/// </remarks>
sealed class MirrorZeroMap
{
    readonly HBitmap _bits;
    readonly long _granularity;
    readonly long _length;

    public MirrorZeroMap(long length, long granularity)
    {
        _granularity = granularity;
        _length = length;
        _bits = new HBitmap((length + granularity - 1) / granularity);
    }

    /// <summary>Chunks known to read zeroes.</summary>
    public long ZeroChunks => _bits.Count;

    /// <summary>Every chunk is known to read zeroes.</summary>
    public bool All => _bits.Count == _bits.Size;

    /// <summary>The whole target reads zeroes (target-is-zero, or a write-zeroes over all of it).</summary>
    public void MarkAll() => _bits.SetAll();

    /// <summary>[offset, offset + length) now reads zeroes: marks the chunks it fills whole.</summary>
    public void MarkZero(long offset, long length)
    {
        var end = offset + length;
        var first = (offset + _granularity - 1) / _granularity;
        // The device's last chunk may be short: reaching the end fills it.
        var endChunk = end >= _length ? _bits.Size : end / _granularity;
        if (endChunk > first)
        {
            _bits.Set(first, endChunk - first);
        }
    }

    /// <summary>[offset, offset + length) may no longer read zeroes: clears every chunk it touches.</summary>
    public void Forget(long offset, long length)
    {
        if (length <= 0)
        {
            return;
        }

        var (first, count) = Touched(offset, length);
        _bits.Reset(first, count);
    }

    /// <summary>Every chunk [offset, offset + length) touches is known to read zeroes.</summary>
    public bool IsZero(long offset, long length)
    {
        if (length <= 0)
        {
            return true;
        }

        var (first, count) = Touched(offset, length);
        return _bits.NextClear(first, first + count) == first + count;
    }

    /// <summary>
    /// The first run of chunks not known zero within [offset, end) (chunk-aligned <paramref name="offset"/>), in
    /// bytes and clipped to <paramref name="end"/>; its start is <paramref name="end"/> when every chunk is known zero.
    /// </summary>
    public (long Start, long End) NextUnknown(long offset, long end)
    {
        var endChunk = Math.Min((end + _granularity - 1) / _granularity, _bits.Size);
        var first = _bits.NextClear(offset / _granularity, endChunk);
        if (first >= endChunk)
        {
            return (end, end);
        }

        var next = _bits.NextSet(first);
        var stop = next < 0 || next > endChunk ? endChunk : next;
        return (Math.Max(first * _granularity, offset), Math.Min(stop * _granularity, end));
    }

    (long First, long Count) Touched(long offset, long length)
    {
        var first = offset / _granularity;
        var endChunk = Math.Min((offset + length + _granularity - 1) / _granularity, _bits.Size);
        return (first, endChunk - first);
    }
}
