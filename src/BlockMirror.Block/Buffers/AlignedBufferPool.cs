using System.Collections.Concurrent;

namespace BlockMirror.Block.Buffers;

/// <summary>
/// A small pool of aligned buffers in power-of-two size classes (O_DIRECT bounce buffers, request
/// buffers). Buffers beyond <see cref="MaxPooledSize"/> are allocated and freed per use; the pool keeps at
/// most <see cref="MaxPerClass"/> buffers per class, or more of a small class when the owner allows more
/// bytes per class, so memory stays bounded.
/// </summary>
/// <remarks>
/// A buffer that is not in the pool when asked for costs more than its allocation: the memory is fresh
/// (mmap for the large classes), so it is zeroed and faulted in page by page, and unmapped again when it
/// is freed. An owner with many requests in flight (an NBD server with several connections) should let
/// the pool keep as many buffers as it has requests.
/// </remarks>
public sealed class AlignedBufferPool
{
    public const int MaxPooledSize = 4 << 20;
    public const int MaxPerClass = 16;

    readonly ConcurrentBag<AlignedMemory>[] _classes =
        [.. Enumerable.Range(0, 32).Select(_ => new ConcurrentBag<AlignedMemory>())];

    // Buffers held by each class (ConcurrentBag.Count takes every thread's lock).
    readonly int[] _counts = new int[32];
    readonly long _maxBytesPerClass;

    /// <param name="alignment">Address (and size) alignment of every buffer.</param>
    /// <param name="maxBytesPerClass">
    /// Bytes a class may keep beyond <see cref="MaxPerClass"/> buffers: a class keeps up to
    /// max(<see cref="MaxPerClass"/>, this / buffer size) buffers. 0 keeps <see cref="MaxPerClass"/>.
    /// </param>
    public AlignedBufferPool(int alignment, long maxBytesPerClass = 0)
    {
        Alignment = alignment;
        _maxBytesPerClass = maxBytesPerClass;
    }

    public int Alignment { get; }

    /// <summary>A buffer of at least <paramref name="length"/> bytes; give it back with <see cref="Return"/>.</summary>
    public AlignedMemory Rent(int length)
    {
        var size = (int)Math.Max((uint)Alignment, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)length));
        var index = System.Numerics.BitOperations.Log2((uint)size);
        if (size <= MaxPooledSize && _classes[index].TryTake(out var pooled))
        {
            Interlocked.Decrement(ref _counts[index]);
            return pooled;
        }

        return new AlignedMemory(size, Alignment);
    }

    public void Return(AlignedMemory buffer)
    {
        var index = System.Numerics.BitOperations.Log2((uint)buffer.Length);
        var limit = Math.Max(MaxPerClass, _maxBytesPerClass / buffer.Length);
        if (buffer.Length <= MaxPooledSize && Interlocked.Increment(ref _counts[index]) <= limit)
        {
            _classes[index].Add(buffer);
        }
        else
        {
            if (buffer.Length <= MaxPooledSize)
            {
                Interlocked.Decrement(ref _counts[index]);
            }

            ((IDisposable)buffer).Dispose();
        }
    }
}
