using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>
/// The trivial model of <see cref="Block.Bitmaps.DirtyBitmap"/>: one bool per chunk, each rule written
/// per chunk from the contract. A byte is dirty when it lies before the device end and its chunk is dirty.
/// </summary>
sealed class ChunkModel
{
    bool[] _chunks;

    public ChunkModel(long granularity, long length)
    {
        Granularity = granularity;
        Length = length;
        _chunks = new bool[ChunkCount(length)];
    }

    public long Granularity { get; }

    public long Length { get; private set; }

    public int Chunks => _chunks.Length;

    int ChunkCount(long length) => (int)((length + Granularity - 1) / Granularity);

    long ChunkStart(int chunk) => chunk * Granularity;

    /// <summary>The chunk's last byte plus one, cut at the device end.</summary>
    long ChunkEnd(int chunk) => Math.Min(Length, (chunk + 1) * Granularity);

    public bool IsChunkDirty(int chunk) => _chunks[chunk];

    /// <summary>True when the range shares a byte with the chunk: setting the range marks it.</summary>
    public bool SetMarks(long offset, long length, int chunk) =>
        length > 0 && offset < (chunk + 1) * Granularity && ChunkStart(chunk) < offset + length;

    /// <summary>True when the range holds every byte of the chunk up to the device end: resetting the range clears it.</summary>
    public bool ResetClears(long offset, long length, int chunk) =>
        length > 0 && offset <= ChunkStart(chunk) && ChunkEnd(chunk) <= offset + length;

    public void SetDirty(long offset, long length)
    {
        for (var chunk = 0; chunk < Chunks; chunk++)
        {
            _chunks[chunk] |= SetMarks(offset, length, chunk);
        }
    }

    public void ResetDirty(long offset, long length)
    {
        for (var chunk = 0; chunk < Chunks; chunk++)
        {
            _chunks[chunk] &= !ResetClears(offset, length, chunk);
        }
    }

    public void SetAll() => Array.Fill(_chunks, true);

    public void Clear() => Array.Fill(_chunks, false);

    /// <summary>Chunks that still exist keep their state (a partial last chunk that grows stays dirty); new chunks are clean.</summary>
    public void Resize(long length)
    {
        var old = _chunks;
        Length = length;
        _chunks = new bool[ChunkCount(length)];
        Array.Copy(old, _chunks, Math.Min(old.Length, _chunks.Length));
    }

    public bool IsByteDirty(long offset) => offset >= 0 && offset < Length && _chunks[offset / Granularity];

    public long DirtyBytes
    {
        get
        {
            long bytes = 0;
            for (var chunk = 0; chunk < Chunks; chunk++)
            {
                if (_chunks[chunk])
                {
                    bytes += ChunkEnd(chunk) - ChunkStart(chunk);
                }
            }

            return bytes;
        }
    }

    /// <summary>The first dirty byte at or after <paramref name="from"/>, or -1.</summary>
    public long NextDirty(long from)
    {
        from = Math.Max(0, from);
        if (from >= Length)
        {
            return -1;
        }

        if (_chunks[from / Granularity])
        {
            return from;
        }

        for (var chunk = (int)(from / Granularity) + 1; chunk < Chunks; chunk++)
        {
            if (_chunks[chunk])
            {
                return ChunkStart(chunk);
            }
        }

        return -1;
    }

    /// <summary>The first clean byte at or after <paramref name="from"/>, or the device length.</summary>
    public long NextClean(long from)
    {
        for (var offset = Math.Max(0, from); offset < Length; offset = ChunkStart((int)(offset / Granularity) + 1))
        {
            if (!_chunks[offset / Granularity])
            {
                return offset;
            }
        }

        return Length;
    }

    /// <summary>
    /// The area <see cref="Block.Bitmaps.DirtyBitmap.TryGetNextDirtyArea"/> must return: from the first
    /// dirty byte, through consecutive dirty chunks, ending at a chunk boundary or the device end, and
    /// spanning at most max(1, maxLength / granularity) chunks counted from the chunk it starts in.
    /// </summary>
    public ByteRange? NextDirtyArea(long from, long maxLength)
    {
        var start = NextDirty(from);
        if (start < 0)
        {
            return null;
        }

        var firstChunk = (int)(start / Granularity);
        var maxChunks = Math.Max(1, maxLength / Granularity);
        var endChunk = firstChunk;
        while (endChunk < Chunks && _chunks[endChunk] && endChunk - firstChunk < maxChunks)
        {
            endChunk++;
        }

        var end = Math.Min(Length, endChunk * Granularity);
        return new ByteRange(start, end - start);
    }
}
