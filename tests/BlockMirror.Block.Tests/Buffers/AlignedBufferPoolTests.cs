using BlockMirror.Block.Buffers;

namespace BlockMirror.Block.Tests.Buffers;

/// <summary>How many buffers a size class keeps: 16 by default, more of a small class when the owner allows the bytes.</summary>
public sealed class AlignedBufferPoolTests
{
    [Theory]
    [InlineData(0L, 256 << 10, AlignedBufferPool.MaxPerClass)]
    [InlineData(32L << 20, 256 << 10, 128)]
    [InlineData(32L << 20, 4 << 20, AlignedBufferPool.MaxPerClass)]
    public void A_class_keeps_its_limit_of_buffers_and_hands_the_same_ones_out_again(long maxBytesPerClass, int size, int kept)
    {
        var pool = new AlignedBufferPool(4096, maxBytesPerClass);
        var buffers = Enumerable.Range(0, kept + 8).Select(_ => pool.Rent(size)).ToList();
        foreach (var buffer in buffers)
        {
            pool.Return(buffer);
        }

        var again = Enumerable.Range(0, kept + 8).Select(_ => pool.Rent(size)).ToList();
        Assert.Equal(kept, again.Count(buffers.Contains));
        Assert.All(again, b => Assert.True(b.Length >= size && AlignedMemory.IsAligned(b.Memory, 4096)));
    }
}
