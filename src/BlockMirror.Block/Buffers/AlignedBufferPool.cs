using System.Collections.Concurrent;

namespace BlockMirror.Block.Buffers;

/// <summary>
/// A small pool of aligned bounce buffers in power-of-two size classes, for O_DIRECT requests whose
/// caller's buffer is not aligned. Buffers beyond <see cref="MaxPooledSize"/> are allocated and freed
/// per use; the pool keeps at most <see cref="MaxPerClass"/> buffers per class, so memory stays bounded.
/// </summary>
public sealed class AlignedBufferPool(int alignment)
{
    public const int MaxPooledSize = 4 << 20;
    public const int MaxPerClass = 16;

    readonly ConcurrentBag<AlignedMemory>[] _classes =
        [.. Enumerable.Range(0, 32).Select(_ => new ConcurrentBag<AlignedMemory>())];

    public int Alignment { get; } = alignment;

    /// <summary>A buffer of at least <paramref name="length"/> bytes; give it back with <see cref="Return"/>.</summary>
    public AlignedMemory Rent(int length)
    {
        var size = (int)Math.Max((uint)Alignment, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)length));
        if (size <= MaxPooledSize && _classes[System.Numerics.BitOperations.Log2((uint)size)].TryTake(out var pooled))
        {
            return pooled;
        }

        return new AlignedMemory(size, Alignment);
    }

    public void Return(AlignedMemory buffer)
    {
        var bag = _classes[System.Numerics.BitOperations.Log2((uint)buffer.Length)];
        if (buffer.Length <= MaxPooledSize && bag.Count < MaxPerClass)
        {
            bag.Add(buffer);
        }
        else
        {
            ((IDisposable)buffer).Dispose();
        }
    }
}
