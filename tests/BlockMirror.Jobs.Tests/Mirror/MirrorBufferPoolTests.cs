using System.Runtime.InteropServices;
using BlockMirror.Block.Buffers;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

public sealed class MirrorBufferPoolTests
{
    const int Chunk = 4096;

    static (int Start, int Length) Where(Memory<byte> segment)
    {
        Assert.True(MemoryMarshal.TryGetMemoryManager<byte, AlignedMemory>(segment, out _, out var start, out var length));
        return (start, length);
    }

    [Fact]
    public void A_fresh_pool_hands_out_one_contiguous_segment()
    {
        using var pool = new MirrorBufferPool(16 * Chunk, Chunk);
        var segments = new List<Memory<byte>>();

        pool.Take(5 * Chunk, segments);

        Assert.Single(segments);
        Assert.Equal(5 * Chunk, segments[0].Length);
        Assert.Equal(11, pool.FreeChunks);
    }

    [Fact]
    public void A_short_last_chunk_gives_a_segment_of_exactly_the_length()
    {
        using var pool = new MirrorBufferPool(16 * Chunk, Chunk);
        var segments = new List<Memory<byte>>();

        pool.Take(2 * Chunk + 100, segments);

        Assert.Equal(2 * Chunk + 100, segments.Sum(s => s.Length));
        Assert.Equal(13, pool.FreeChunks);
    }

    [Fact]
    public void Random_takes_and_returns_never_hand_out_a_chunk_twice_and_lose_none()
    {
        const int Chunks = 32;
        using var pool = new MirrorBufferPool(Chunks * Chunk, Chunk);
        var random = new Random(1234);
        var held = new List<List<Memory<byte>>>();
        var owner = new int[Chunks];
        Array.Fill(owner, -1);
        for (var step = 0; step < 5000; step++)
        {
            if (held.Count > 0 && (random.Next(2) == 0 || pool.FreeChunks == 0))
            {
                var index = random.Next(held.Count);
                foreach (var segment in held[index])
                {
                    var (start, length) = Where(segment);
                    for (var c = start / Chunk; c < (start + length + Chunk - 1) / Chunk; c++)
                    {
                        owner[c] = -1;
                    }
                }

                pool.Return(held[index]);
                held.RemoveAt(index);
                continue;
            }

            var take = random.Next(1, pool.FreeChunks + 1);
            var segments = new List<Memory<byte>>();
            pool.Take((long)take * Chunk - random.Next(Chunk), segments);
            var covered = 0;
            foreach (var segment in segments)
            {
                var (start, length) = Where(segment);
                Assert.Equal(0, start % Chunk);
                for (var c = start / Chunk; c < (start + length + Chunk - 1) / Chunk; c++)
                {
                    Assert.True(owner[c] == -1, $"step {step}: chunk {c} handed out twice");
                    owner[c] = step;
                    covered++;
                }
            }

            Assert.Equal(take, covered);
            held.Add(segments);
        }

        foreach (var segments in held)
        {
            pool.Return(segments);
        }

        Assert.Equal(Chunks, pool.FreeChunks);
        var all = new List<Memory<byte>>();
        pool.Take(Chunks * Chunk, all);
        Assert.Equal(Chunks * Chunk, all.Sum(s => s.Length));
    }

    [Fact]
    public void Returned_chunks_merge_again_on_the_next_take()
    {
        using var pool = new MirrorBufferPool(16 * Chunk, Chunk);
        var first = new List<Memory<byte>>();
        var second = new List<Memory<byte>>();
        pool.Take(4 * Chunk, first);
        pool.Take(4 * Chunk, second);
        pool.Return(first);

        var again = new List<Memory<byte>>();
        pool.Take(4 * Chunk, again);

        Assert.Single(again);
        Assert.Equal(0, Where(again[0]).Start);
    }
}
