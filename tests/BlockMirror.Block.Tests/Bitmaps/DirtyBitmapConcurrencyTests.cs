using System.Collections.Concurrent;
using BlockMirror.Block.Bitmaps;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Bitmaps;

/// <summary>
/// Writers marking a DirtyBitmap while another thread iterates it and resets what it found, as guest
/// writes race the mirror's copy loop.
/// </summary>
/// <remarks>
/// <para>The check is deterministic although the interleaving is not. Every operation takes a ticket from
/// one shared clock just before it starts and another just after it returns; the bitmap's lock makes each
/// operation take effect somewhere between its two tickets. So for one chunk, a set whose start ticket is
/// later than the end ticket of every reset that clears the chunk happened after all of them: the chunk
/// must be dirty. A reset whose start ticket is later than the end ticket of every set that marks the
/// chunk happened last (or the chunk was never set): the chunk must be clean. Chunks whose last set and
/// reset overlapped in time may be either and are not checked.</para>
/// <para>The threads pace each other so that they really overlap, whatever the scheduler does: a writer
/// runs at most one quota of sets ahead of the resetter's passes, and each pass starts only when every
/// writer is half-way through its current quota, so the rest of the quota races the pass. Writers make a
/// last round of sets after the resetter has stopped, so some chunks are always checkably dirty and the
/// test cannot pass by checking nothing.</para>
/// </remarks>
public sealed class DirtyBitmapConcurrencyTests
{
    const long Granularity = 512;

    // 5000 chunks, three HBitmap levels, and a partial last chunk.
    const long Length = (5000 * Granularity) - 100;

    const int Writers = 3;
    const int Passes = 30;
    const int SetsPerPass = 200;
    const int SetsAfterResetting = 100;

    // Only a guard against a hang if a thread dies; never reached when the threads work.
    static readonly TimeSpan StallLimit = TimeSpan.FromMinutes(1);

    readonly record struct Op(long Offset, long Length, long Start, long End);

    /// <summary>What the threads share: the ticket clock and the pacing counters.</summary>
    sealed class Shared
    {
        long _now;
        int _passesStarted;
        readonly int[] _setsDone = new int[Writers];

        public ManualResetEventSlim ResetterDone { get; } = new();

        public ConcurrentQueue<string> Problems { get; } = new();

        public long Tick() => Interlocked.Increment(ref _now);

        public int PassesStarted => Volatile.Read(ref _passesStarted);

        public void StartPass() => Interlocked.Increment(ref _passesStarted);

        public void SetDone(int writer, int count) => Volatile.Write(ref _setsDone[writer], count);

        public int SlowestWriter() => Enumerable.Range(0, Writers).Min(w => Volatile.Read(ref _setsDone[w]));
    }

    [Fact]
    public void Sets_after_the_last_reset_of_a_chunk_are_never_lost() =>
        Seeds.Run(Seeds.Range(4), Run);

    static void Run(int seed)
    {
        var bitmap = new DirtyBitmap(Granularity, Length);
        var shared = new Shared();
        var setLogs = new List<Op>[Writers];
        var resetLog = new List<Op>();

        // An exception on a thread becomes a reported problem instead of a crashed test host.
        Thread Start(Action body) => new(() =>
        {
            try
            {
                body();
            }
            catch (Exception ex)
            {
                shared.Problems.Enqueue(ex.ToString());
            }
        });

        var threads = new List<Thread>();
        for (var w = 0; w < Writers; w++)
        {
            var writer = w;
            setLogs[writer] = [];
            threads.Add(Start(() => Write(bitmap, shared, new Random((seed * 101) + writer), writer, setLogs[writer])));
        }

        threads.Add(Start(() =>
        {
            try
            {
                Reset(bitmap, shared, new Random((seed * 101) + 99), resetLog);
            }
            finally
            {
                shared.ResetterDone.Set();
            }
        }));

        foreach (var thread in threads)
        {
            thread.Start();
        }

        foreach (var thread in threads)
        {
            thread.Join();
        }

        Assert.Empty(shared.Problems);
        CheckFinalState(bitmap, [.. setLogs.SelectMany(log => log)], resetLog);
    }

    /// <summary>Sets ranges inside the writer's own fifth of the device (disjoint) or anywhere (overlapping).</summary>
    static void Write(DirtyBitmap bitmap, Shared shared, Random random, int writer, List<Op> log)
    {
        var regionSize = Length / (Writers + 2);
        var total = ((Passes + 1) * SetsPerPass) + SetsAfterResetting;
        for (var i = 0; i < total; i++)
        {
            if (i < (Passes + 1) * SetsPerPass)
            {
                // At most one quota ahead of the resetter's passes.
                var quota = i;
                SpinWait.SpinUntil(() => quota < (shared.PassesStarted + 1) * SetsPerPass || shared.ResetterDone.IsSet);
            }
            else
            {
                shared.ResetterDone.Wait();
            }

            var (regionStart, regionLength) = random.Next(2) == 0 ? (writer * regionSize, regionSize) : (0, Length);
            var offset = regionStart + random.NextInt64(0, regionLength);
            var length = Math.Min(regionStart + regionLength - offset, random.NextInt64(1, 16 * Granularity));
            var before = shared.Tick();
            bitmap.SetDirty(offset, length);
            log.Add(new Op(offset, length, before, shared.Tick()));
            shared.SetDone(writer, i + 1);
        }
    }

    /// <summary>Walks the dirty areas like a copy loop, resetting most of what it finds, plus unaligned ranges.</summary>
    static void Reset(DirtyBitmap bitmap, Shared shared, Random random, List<Op> log)
    {
        for (var pass = 0; pass < Passes; pass++)
        {
            shared.StartPass();
            var halfWay = ((pass + 1) * SetsPerPass) + (SetsPerPass / 2);
            if (!SpinWait.SpinUntil(() => shared.SlowestWriter() >= halfWay, StallLimit))
            {
                shared.Problems.Enqueue($"pass {pass}: writers stalled");
                return;
            }

            var maxLength = random.NextInt64(1, 64) * Granularity;
            foreach (var area in bitmap.EnumerateDirtyAreas(maxLength))
            {
                if (area.Length <= 0 || area.Offset < 0 || area.End > Length || area.Length > maxLength)
                {
                    shared.Problems.Enqueue($"pass {pass}: bad area {area} (max {maxLength})");
                }

                var (offset, length) = random.Next(4) == 0
                    ? (random.NextInt64(0, Length), random.NextInt64(1, 8 * Granularity))
                    : (area.Offset, area.Length);
                var before = shared.Tick();
                bitmap.ResetDirty(offset, length);
                log.Add(new Op(offset, length, before, shared.Tick()));
            }

            var dirty = bitmap.DirtyBytes;
            if (dirty < 0 || dirty > Length)
            {
                shared.Problems.Enqueue($"pass {pass}: DirtyBytes {dirty}");
            }
        }
    }

    static void CheckFinalState(DirtyBitmap bitmap, List<Op> sets, List<Op> resets)
    {
        var model = new ChunkModel(Granularity, Length);
        var chunks = model.Chunks;
        var lastSetStart = new long[chunks];
        var lastSetEnd = new long[chunks];
        var lastResetStart = new long[chunks];
        var lastResetEnd = new long[chunks];
        foreach (var set in sets)
        {
            for (var chunk = (int)(set.Offset / Granularity); chunk < chunks && model.SetMarks(set.Offset, set.Length, chunk); chunk++)
            {
                lastSetStart[chunk] = Math.Max(lastSetStart[chunk], set.Start);
                lastSetEnd[chunk] = Math.Max(lastSetEnd[chunk], set.End);
            }
        }

        foreach (var reset in resets)
        {
            for (var chunk = (int)(reset.Offset / Granularity); chunk < chunks && reset.Offset + reset.Length > chunk * Granularity; chunk++)
            {
                if (model.ResetClears(reset.Offset, reset.Length, chunk))
                {
                    lastResetStart[chunk] = Math.Max(lastResetStart[chunk], reset.Start);
                    lastResetEnd[chunk] = Math.Max(lastResetEnd[chunk], reset.End);
                }
            }
        }

        // Ticket 0 means "never": the clock's first ticket is 1.
        int mustBeDirty = 0, mustBeClean = 0;
        long expectedBytes = 0;
        for (var chunk = 0; chunk < chunks; chunk++)
        {
            var offset = chunk * Granularity;
            var dirty = bitmap.IsDirty(offset);
            if (lastSetStart[chunk] > lastResetEnd[chunk])
            {
                mustBeDirty++;
                Assert.True(dirty, $"chunk {chunk} was set (tickets {lastSetStart[chunk]}..{lastSetEnd[chunk]}) after its last reset ended ({lastResetEnd[chunk]}) but is clean");
            }
            else if (lastResetStart[chunk] > lastSetEnd[chunk] || lastSetEnd[chunk] == 0)
            {
                mustBeClean++;
                Assert.False(dirty, $"chunk {chunk} was reset (tickets {lastResetStart[chunk]}..{lastResetEnd[chunk]}) after its last set ended ({lastSetEnd[chunk]}, 0 = never) but is dirty");
            }

            if (dirty)
            {
                expectedBytes += Math.Min(Length, offset + Granularity) - offset;
            }
        }

        Assert.True(mustBeDirty > 0, $"no chunk was checkably dirty ({mustBeClean} checkably clean)");
        Assert.Equal(expectedBytes, bitmap.DirtyBytes);
        Assert.Equal(expectedBytes, bitmap.EnumerateDirtyAreas().Sum(area => area.Length));
    }
}
