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

    // Open while the writers may issue requests; QuiesceAsync swaps in an unfinished one. A writer counts
    // itself in _active before it looks at the gate, and the quiescer swaps the gate before it reads
    // _active (both full fences), so once _active is seen at zero no request is in flight or about to start.
    TaskCompletionSource _gate = Opened();
    int _active;

    /// <summary>
    /// Now and then a writer sends a group of overlapping unaligned writes at once, all of one byte, so their
    /// union is exact in the model whatever order they land in: the mirror's filter must order conflicting
    /// guest writes among themselves (iotest 151's intersecting writes). Off by default, so the draws of
    /// the seeds that do not use it stay as they were.
    /// </summary>
    public bool OverlappingGroups { get; init; }

    static TaskCompletionSource Opened()
    {
        var open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        open.SetResult();
        return open;
    }

    /// <summary>
    /// Holds the writers and waits until none has a request in flight: a quiescent point, where every write
    /// the model holds has been acknowledged and no other is under way. <see cref="Release"/> lets them go on.
    /// </summary>
    public async Task QuiesceAsync()
    {
        Interlocked.Exchange(ref _gate, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        using var limit = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (Volatile.Read(ref _active) != 0)
        {
            await Task.Delay(1, limit.Token);
        }
    }

    /// <summary>Lets held writers go on after <see cref="QuiesceAsync"/>.</summary>
    public void Release() => Volatile.Read(ref _gate).TrySetResult();

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
        Release();
        await Task.Delay(random.Next(0, 5));
        await _stop.CancelAsync();
        await Task.WhenAll(_tasks);
    }

    /// <summary>Waits at the gate while the writers are held; false once they are told to stop.</summary>
    async Task<bool> EnterAsync(CancellationToken stop)
    {
        while (true)
        {
            Interlocked.Increment(ref _active);
            var gate = Volatile.Read(ref _gate);
            if (gate.Task.IsCompleted && !stop.IsCancellationRequested)
            {
                return true;
            }

            Interlocked.Decrement(ref _active);
            if (stop.IsCancellationRequested)
            {
                return false;
            }

            try
            {
                await gate.Task.WaitAsync(stop);
            }
            catch (OperationCanceledException)
            {
                return false;
            }
        }
    }

    async Task WriteAsync(Random random, CancellationToken stop)
    {
        var buffer = new byte[16384];
        var burst = random.Next(20, 200);
        var done = 0;
        while (await EnterAsync(stop))
        {
            try
            {
                await WriteOneAsync(random, buffer, done > burst);
            }
            finally
            {
                Interlocked.Decrement(ref _active);
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

    async Task WriteOneAsync(Random random, byte[] buffer, bool calm)
    {
        var size = model.LongLength;
        var offset = random.NextInt64(size);
        var length = (int)Math.Min(random.Next(1, calm ? Math.Min(buffer.Length, 2 * granularity) : buffer.Length), size - offset);
        if (OverlappingGroups && random.Next(16) == 0)
        {
            await WriteOverlappingAsync(random, offset, length);
            return;
        }

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
    }

    /// <summary>
    /// Two to four writes of one byte value at once, on unaligned pieces of [offset, offset+length) that
    /// overlap each other, all in flight together; the lock covers their union, so only they overlap.
    /// </summary>
    async Task WriteOverlappingAsync(Random random, long offset, int length)
    {
        var fill = new byte[length];
        Array.Fill(fill, (byte)random.Next(1, 256));
        var pieces = new (long Offset, int Length)[random.Next(2, 5)];
        for (var i = 0; i < pieces.Length; i++)
        {
            var start = random.Next(length);
            pieces[i] = (offset + start, random.Next(1, length - start + 1));
        }

        using (await _locks.AcquireAsync(offset, length))
        {
            await Task.WhenAll(pieces.Select(p => vm.WriteAsync(p.Offset, fill.AsMemory(0, p.Length), RequestFlags.None, CancellationToken.None).AsTask()));
            foreach (var p in pieces)
            {
                fill.AsSpan(0, p.Length).CopyTo(model.AsSpan((int)p.Offset));
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
