namespace BlockMirror.Block.Graph;

/// <summary>
/// The data of a write as the pipeline sees it on its slow path: one buffer, a gather list, or zeroes,
/// so that padding and splitting are written once for all three.
/// </summary>
readonly struct WriteSource
{
    readonly ReadOnlyMemory<byte> _single;
    readonly IReadOnlyList<ReadOnlyMemory<byte>>? _vector;

    WriteSource(ReadOnlyMemory<byte> single, IReadOnlyList<ReadOnlyMemory<byte>>? vector, long length, bool zeroes)
    {
        _single = single;
        _vector = vector;
        Length = length;
        IsZeroes = zeroes;
    }

    public static WriteSource Of(ReadOnlyMemory<byte> buffer) => new(buffer, null, buffer.Length, false);

    public static WriteSource Of(IReadOnlyList<ReadOnlyMemory<byte>> buffers) =>
        buffers.Count == 1 ? Of(buffers[0]) : new(default, buffers, Io.IoVectors.TotalLength(buffers), false);

    public static WriteSource Zeroes(long length) => new(default, null, length, true);

    public long Length { get; }

    public bool IsZeroes { get; }

    /// <summary>The single buffer, when the data is one (a gather list and zeroes are not).</summary>
    public bool TryGetSingle(out ReadOnlyMemory<byte> buffer)
    {
        buffer = _single;
        return _vector is null && !IsZeroes;
    }

    public IReadOnlyList<ReadOnlyMemory<byte>> Vector => _vector ?? throw new InvalidOperationException("not a gather list");

    public WriteSource Slice(long skip, long length)
    {
        if (IsZeroes)
        {
            return Zeroes(length);
        }

        if (_vector is null)
        {
            return Of(_single.Slice((int)skip, (int)length));
        }

        return Of(BufferLists.Slice(_vector, skip, length));
    }

    /// <summary>Copies the data (or zeroes) into <paramref name="target"/>, which is exactly <see cref="Length"/> long.</summary>
    public void CopyTo(Span<byte> target)
    {
        if (IsZeroes)
        {
            target.Clear();
        }
        else if (_vector is null)
        {
            _single.Span.CopyTo(target);
        }
        else
        {
            foreach (var buffer in _vector)
            {
                buffer.Span.CopyTo(target);
                target = target[buffer.Length..];
            }
        }
    }
}

/// <summary>Where a read's data goes on the pipeline's slow path: one buffer or a scatter list.</summary>
readonly struct ReadTarget
{
    readonly Memory<byte> _single;
    readonly IReadOnlyList<Memory<byte>>? _vector;

    ReadTarget(Memory<byte> single, IReadOnlyList<Memory<byte>>? vector, long length)
    {
        _single = single;
        _vector = vector;
        Length = length;
    }

    public static ReadTarget Of(Memory<byte> buffer) => new(buffer, null, buffer.Length);

    public static ReadTarget Of(IReadOnlyList<Memory<byte>> buffers) =>
        buffers.Count == 1 ? Of(buffers[0]) : new(default, buffers, Io.IoVectors.TotalLength(buffers));

    public long Length { get; }

    public bool TryGetSingle(out Memory<byte> buffer)
    {
        buffer = _single;
        return _vector is null;
    }

    public IReadOnlyList<Memory<byte>> Vector => _vector ?? throw new InvalidOperationException("not a scatter list");

    public ReadTarget Slice(long skip, long length) =>
        _vector is null ? Of(_single.Slice((int)skip, (int)length)) : Of(BufferLists.Slice(_vector, skip, length));

    /// <summary>Copies <paramref name="source"/>, exactly <see cref="Length"/> long, into the target.</summary>
    public void CopyFrom(ReadOnlySpan<byte> source)
    {
        if (_vector is null)
        {
            source.CopyTo(_single.Span);
            return;
        }

        foreach (var buffer in _vector)
        {
            source[..buffer.Length].CopyTo(buffer.Span);
            source = source[buffer.Length..];
        }
    }
}

/// <summary>Byte-range windows of scatter/gather lists, without copying data.</summary>
static class BufferLists
{
    public static List<Memory<byte>> Slice(IReadOnlyList<Memory<byte>> buffers, long skip, long length) =>
        Slice(buffers, skip, length, static b => b.Length, static (b, start, count) => b.Slice(start, count));

    public static List<ReadOnlyMemory<byte>> Slice(IReadOnlyList<ReadOnlyMemory<byte>> buffers, long skip, long length) =>
        Slice(buffers, skip, length, static b => b.Length, static (b, start, count) => b.Slice(start, count));

    static List<T> Slice<T>(IReadOnlyList<T> buffers, long skip, long length, Func<T, int> lengthOf, Func<T, int, int, T> slice)
    {
        var result = new List<T>();
        foreach (var buffer in buffers)
        {
            if (length == 0)
            {
                break;
            }

            var bufferLength = lengthOf(buffer);
            if (skip >= bufferLength)
            {
                skip -= bufferLength;
                continue;
            }

            var take = (int)Math.Min(bufferLength - skip, length);
            result.Add(slice(buffer, (int)skip, take));
            length -= take;
            skip = 0;
        }

        return result;
    }
}
