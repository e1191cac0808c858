using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// Random writers on one edge (the guest of a concurrency test), keeping an exact byte model of what every
/// acknowledged request left on the disk: writes, write-zeroes (with or without may-unmap, some with FUA)
/// and discards, overlapping freely with whatever a job does below the edge.
/// </summary>
/// <remarks>
/// Each request holds a <see cref="RangeLock"/> over its range, so no two writer requests overlap in time
/// and the model stays exact. Writers run a burst at full speed, then calmly: background mirroring
/// converges only while writers dirty chunks more slowly than the job copies them (a one-chunk buffer
/// copies one chunk at a time), so calm writers touch at most two chunks every few milliseconds. They
/// still write through READY, the drain and the pivot.
/// </remarks>
/// <param name="vm">The writers' edge; it may be moved to another node while they run.</param>
/// <param name="model">The model: what the edge must read. Initialised by the caller.</param>
/// <param name="granularity">The job's chunk size: calm writers touch at most two chunks per request.</param>
/// <param name="discardZeroes">
/// True when a discard reads back as zeroes (the memory driver). False when what a discard leaves is the
/// driver's choice (qcow2 releases whole clusters only, and only with discard=unmap): the range is read
/// back under its lock, every byte must be either what it was or zero, and the model takes what was read.
/// </param>
sealed class ConcurrentWriters(NodeEdge vm, byte[] model, int granularity, bool discardZeroes) : IDisposable
{
    readonly RangeLock _locks = new();
    readonly CancellationTokenSource _stop = new();
    readonly List<Task> _tasks = [];

    /// <summary>Starts <paramref name="count"/> writers, each with its own generator derived from <paramref name="seed"/>.</summary>
    public void Start(int count, int seed)
    {
        for (var w = 0; w < count; w++)
        {
            var random = new Random(seed * 31 + w);
            _tasks.Add(Task.Run(() => WriteAsync(random, _stop.Token)));
        }
    }

    /// <summary>Lets the writers run a little longer on whatever they now point at, then stops them and waits for them.</summary>
    public async Task StopAsync(Random random)
    {
        await Task.Delay(random.Next(0, 5));
        await _stop.CancelAsync();
        await Task.WhenAll(_tasks);
    }

    async Task WriteAsync(Random random, CancellationToken stop)
    {
        var size = model.LongLength;
        var buffer = new byte[16384];
        var burst = random.Next(20, 200);
        var done = 0;
        while (!stop.IsCancellationRequested)
        {
            var calm = done > burst;
            var offset = random.NextInt64(size);
            var length = (int)Math.Min(random.Next(1, calm ? Math.Min(buffer.Length, 2 * granularity) : buffer.Length), size - offset);
            using (await _locks.AcquireAsync(offset, length))
            {
                switch (random.Next(10))
                {
                    case < 7:
                        random.NextBytes(buffer.AsSpan(0, length));
                        await vm.WriteAsync(offset, buffer.AsMemory(0, length), random.Next(8) == 0 ? RequestFlags.Fua : RequestFlags.None, CancellationToken.None);
                        buffer.AsSpan(0, length).CopyTo(model.AsSpan((int)offset));
                        break;
                    case < 9:
                        await vm.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? RequestFlags.MayUnmap : RequestFlags.None, CancellationToken.None);
                        model.AsSpan((int)offset, length).Clear();
                        break;
                    default:
                        await vm.DiscardAsync(offset, length, CancellationToken.None);
                        await ModelDiscardAsync(offset, buffer.AsMemory(0, length));
                        break;
                }
            }

            if (++done > burst)
            {
                try
                {
                    await Task.Delay(random.Next(3, 12), stop);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
            else if (random.Next(4) == 0)
            {
                await Task.Yield();
            }
        }
    }

    async Task ModelDiscardAsync(long offset, Memory<byte> scratch)
    {
        if (discardZeroes)
        {
            model.AsSpan((int)offset, scratch.Length).Clear();
            return;
        }

        await vm.ReadAsync(offset, scratch, CancellationToken.None);
        TakeDiscarded(offset, scratch.Span);
    }

    void TakeDiscarded(long offset, ReadOnlySpan<byte> actual)
    {
        var expected = model.AsSpan((int)offset, actual.Length);
        for (var i = 0; i < actual.Length; i++)
        {
            if (actual[i] != expected[i] && actual[i] != 0)
            {
                throw new InvalidOperationException($"a discard of [{offset}, +{actual.Length}) left byte {offset + i} neither as it was nor zero");
            }
        }

        actual.CopyTo(expected);
    }

    public void Dispose() => _stop.Dispose();
}
