namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>
/// The trivial model of <see cref="Block.Bitmaps.HBitmap"/>: one bool per bit, every query a linear scan
/// (vectorised by the runtime, so big sizes stay cheap).
/// Ranges are clamped to [0, Size) as HBitmap clamps them.
/// </summary>
sealed class BitModel(long size)
{
    bool[] _bits = new bool[size];

    public long Size => _bits.LongLength;

    public long Count => _bits.AsSpan().Count(true);

    public bool Get(long bit) => bit >= 0 && bit < Size && _bits[bit];

    public void Set(long first, long count) => Fill(first, count, true);

    public void Reset(long first, long count) => Fill(first, count, false);

    public void SetAll() => Array.Fill(_bits, true);

    public void ResetAll() => Array.Fill(_bits, false);

    public void Resize(long size)
    {
        var old = _bits;
        _bits = new bool[size];
        Array.Copy(old, _bits, Math.Min(old.LongLength, size));
    }

    /// <summary>First set bit at or after <paramref name="from"/>, or -1.</summary>
    public long NextSet(long from) => from >= Size ? -1 : Array.IndexOf(_bits, true, (int)Math.Max(0, from));

    /// <summary>First clear bit at or after <paramref name="from"/> and below min(Size, limit), else min(Size, limit).</summary>
    public long NextClear(long from, long limit)
    {
        var start = Math.Max(0, from);
        var end = Math.Min(Size, limit);
        if (start >= end)
        {
            return end;
        }

        var found = Array.IndexOf(_bits, false, (int)start, (int)(end - start));
        return found < 0 ? end : found;
    }

    void Fill(long first, long count, bool value)
    {
        var start = Math.Max(0, first);
        var end = Math.Min(Size, first + count);
        if (start < end)
        {
            _bits.AsSpan((int)start, (int)(end - start)).Fill(value);
        }
    }
}
