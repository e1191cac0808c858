using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The mirror's zero map against a model that keeps one flag per byte ("the target reads zero here"): a chunk
/// may be marked only when every byte of it is known zero, and the map must never claim a byte the model
/// does not (that would skip a write-zeroes over bytes the target may still hold).
/// </summary>
public sealed class MirrorZeroMapTests
{
    const long Chunk = 512;

    [Fact]
    public void A_write_zeroes_marks_only_the_chunks_it_fills_whole()
    {
        var map = new MirrorZeroMap(8 * Chunk, Chunk);

        map.MarkZero(Chunk / 2, 3 * Chunk);

        Assert.False(map.IsZero(0, Chunk));
        Assert.True(map.IsZero(Chunk, 2 * Chunk));
        Assert.False(map.IsZero(3 * Chunk, Chunk));
        Assert.Equal(2, map.ZeroChunks);
    }

    [Fact]
    public void Reaching_the_end_fills_a_short_last_chunk()
    {
        var map = new MirrorZeroMap(4 * Chunk + 100, Chunk);

        map.MarkZero(4 * Chunk, 100);

        Assert.True(map.IsZero(4 * Chunk, 100));
        Assert.False(map.All);
        map.MarkZero(0, 4 * Chunk);
        Assert.True(map.All);
    }

    [Fact]
    public void One_byte_of_data_makes_its_whole_chunk_unknown()
    {
        var map = new MirrorZeroMap(4 * Chunk, Chunk);
        map.MarkAll();

        map.Forget(2 * Chunk + 7, 1);

        Assert.False(map.IsZero(2 * Chunk, 1));
        Assert.False(map.IsZero(0, 4 * Chunk));
        Assert.True(map.IsZero(0, 2 * Chunk));
        Assert.True(map.IsZero(3 * Chunk, Chunk));
        Assert.Equal(3, map.ZeroChunks);
    }

    [Fact]
    public void A_range_is_zero_only_if_every_chunk_it_touches_is()
    {
        var map = new MirrorZeroMap(4 * Chunk, Chunk);
        map.MarkZero(0, 2 * Chunk);

        Assert.True(map.IsZero(10, Chunk));
        Assert.False(map.IsZero(Chunk + 10, Chunk));
        Assert.True(map.IsZero(Chunk, 0));
    }

    [Fact]
    public void The_runs_not_known_zero_are_found_in_order_and_clipped_to_the_range()
    {
        var map = new MirrorZeroMap(10 * Chunk, Chunk);
        map.MarkAll();
        map.Forget(2 * Chunk, 2 * Chunk);
        map.Forget(7 * Chunk, 1);

        Assert.Equal((2 * Chunk, 4 * Chunk), map.NextUnknown(0, 10 * Chunk));
        Assert.Equal((7 * Chunk, 8 * Chunk), map.NextUnknown(4 * Chunk, 10 * Chunk));
        Assert.Equal((3 * Chunk, 3 * Chunk + 10), map.NextUnknown(3 * Chunk, 3 * Chunk + 10));
        Assert.Equal((9 * Chunk, 9 * Chunk), map.NextUnknown(8 * Chunk, 9 * Chunk));
    }

    public static TheoryData<int> ModelSeeds => [.. Seeds.Range(20)];

    [Theory]
    [MemberData(nameof(ModelSeeds))]
    public void Random_marks_and_forgets_never_claim_a_byte_the_model_does_not_know_to_be_zero(int seed)
    {
        var random = new Random(seed);
        var length = Chunk * random.Next(1, 40) + random.Next(0, (int)Chunk);
        var map = new MirrorZeroMap(length, Chunk);
        var model = new bool[length];
        for (var step = 0; step < 200; step++)
        {
            var offset = random.NextInt64(0, length);
            var count = random.NextInt64(1, length - offset + 1);
            switch (random.Next(4))
            {
                case 0:
                    map.MarkZero(offset, count);
                    model.AsSpan((int)offset, (int)count).Fill(true);
                    break;
                case 1:
                    map.Forget(offset, count);
                    model.AsSpan((int)offset, (int)count).Clear();
                    break;
                case 2:
                    map.MarkAll();
                    model.AsSpan().Fill(true);
                    break;
                default:
                    break;
            }

            // Sound: what the map calls zero, the model knows to be zero, byte for byte.
            for (long chunk = 0; chunk * Chunk < length; chunk++)
            {
                var start = chunk * Chunk;
                var end = Math.Min(start + Chunk, length);
                var modelZero = !model.AsSpan((int)start, (int)(end - start)).Contains(false);
                if (map.IsZero(start, end - start))
                {
                    Assert.True(modelZero, $"seed {seed} step {step}: chunk {chunk} claimed zero");
                }
            }

            // And a random query agrees with the chunks it touches.
            var qOffset = random.NextInt64(0, length);
            var qLength = random.NextInt64(1, length - qOffset + 1);
            var firstChunk = qOffset / Chunk;
            var endChunk = (qOffset + qLength + Chunk - 1) / Chunk;
            var expected = true;
            for (var chunk = firstChunk; chunk < endChunk; chunk++)
            {
                expected &= map.IsZero(chunk * Chunk, 1);
            }

            Assert.Equal(expected, map.IsZero(qOffset, qLength));

            // The unknown runs of a chunk-aligned range cover exactly its chunks that are not known zero.
            var rangeStart = firstChunk * Chunk;
            var rangeEnd = Math.Min(endChunk * Chunk, length);
            var covered = new List<long>();
            for (var position = rangeStart; position < rangeEnd;)
            {
                var (runStart, runEnd) = map.NextUnknown(position, rangeEnd);
                if (runStart >= rangeEnd)
                {
                    break;
                }

                Assert.True(runStart >= position && runEnd > runStart && runEnd <= rangeEnd);
                for (var chunk = runStart / Chunk; chunk * Chunk < runEnd; chunk++)
                {
                    covered.Add(chunk);
                }

                position = runEnd;
            }

            var unknown = Enumerable.Range((int)firstChunk, (int)(endChunk - firstChunk)).Select(c => (long)c).Where(c => !map.IsZero(c * Chunk, 1));
            Assert.Equal(unknown, covered);
        }
    }

    [Theory]
    [MemberData(nameof(ModelSeeds))]
    public void Marks_without_forgets_lose_nothing_a_whole_chunk_got(int seed)
    {
        // Complete as well as sound where it can be: a chunk filled by one mark is zero afterwards.
        var random = new Random(seed);
        var length = Chunk * random.Next(1, 40);
        var map = new MirrorZeroMap(length, Chunk);
        for (var step = 0; step < 50; step++)
        {
            var offset = random.NextInt64(0, length);
            var count = random.NextInt64(1, length - offset + 1);
            map.MarkZero(offset, count);
            for (var chunk = (offset + Chunk - 1) / Chunk; (chunk + 1) * Chunk <= offset + count; chunk++)
            {
                Assert.True(map.IsZero(chunk * Chunk, Chunk), $"seed {seed}: chunk {chunk} filled by [{offset}, {offset + count}) not marked");
            }
        }
    }
}
