using System.Collections.Concurrent;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;
using Xunit.Abstractions;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The key proof: writers hammer the source with random overlapping writes, write-zeroes and discards
/// while a mirror runs and is paused, resumed, slowed, completed or cancelled at random moments.
/// Afterwards the target must hold exactly what the model of every acknowledged write says.
/// </summary>
/// <remarks>
/// Writers take a range lock around each request, so no two writer requests overlap in time and the
/// model is exact; they still overlap freely with the mirror's reads and copies, which is the point.
/// Fixed seeds (0..N-1, N from BLOCKMIRROR_SEEDS, 2000 by default); a failure names its seed and the
/// scenario, so it can be replayed with <see cref="RunSeedAsync"/> and kept as a named test.
/// </remarks>
public sealed class MirrorConcurrencyTests(ITestOutputHelper output)
{
    public enum Ending
    {
        /// <summary>Complete after READY: the writers move to the target.</summary>
        Complete,

        /// <summary>Cancel (not forced) after READY: the target is a point-in-time copy, the writers stay.</summary>
        CancelAfterReady,

        /// <summary>Forced cancel at a random moment.</summary>
        ForceCancel,
    }

    public sealed record Scenario(int Seed, long Size, long Granularity, long BufSize, int Writers, bool TargetZeroInit,
        MirrorSyncMode Sync, bool AutoFinalize, Ending Ending, bool Pauses, bool SpeedChanges)
    {
        public static Scenario FromSeed(int seed)
        {
            var random = new Random(seed);
            long[] granularities = [512, 1024, 4096, 16384, 65536];
            var granularity = granularities[random.Next(granularities.Length)];

            // Sizes that are and are not multiples of the granularity, so the tail chunk is exercised.
            var size = random.Next(64, 512) * 1024L + (random.Next(3) == 0 ? random.Next(1, 64) * 512L : 0);
            var bufSize = granularity * (1L << random.Next(0, 6));
            var ending = random.Next(10) switch
            {
                < 6 => Ending.Complete,
                < 8 => Ending.CancelAfterReady,
                _ => Ending.ForceCancel,
            };
            return new Scenario(seed, size, granularity, bufSize, random.Next(1, 9), random.Next(2) == 0,
                random.Next(5) == 0 ? MirrorSyncMode.None : MirrorSyncMode.Full, random.Next(2) == 0, ending,
                random.Next(3) == 0, random.Next(6) == 0);
        }
    }

    [Fact]
    public async Task Random_writers_never_lose_a_write_across_seeds()
    {
        var seeds = Seeds.Range(2000).ToArray();
        var failures = new ConcurrentBag<string>();
        var next = -1;

        // Two seeds at a time: both cores busy, and the interleavings differ from a single run.
        var workers = Enumerable.Range(0, 2).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                var index = Interlocked.Increment(ref next);
                if (index >= seeds.Length || !failures.IsEmpty)
                {
                    return;
                }

                var scenario = Scenario.FromSeed(seeds[index]);
                try
                {
                    await RunSeedAsync(scenario).WaitAsync(TimeSpan.FromSeconds(60));
                }
                catch (Exception ex)
                {
                    failures.Add($"{scenario}: {ex}");
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);

        foreach (var failure in failures)
        {
            output.WriteLine(failure);
        }

        Assert.True(failures.IsEmpty, $"{failures.Count} seed(s) failed; first: {failures.FirstOrDefault()}");
    }

    /// <summary>Replays single seeds (for debugging a failure, and for seeds kept as regressions).</summary>
    [Theory]
    [InlineData(22)]
    [InlineData(372)]
    public Task Replay_seed(int seed) => RunSeedAsync(Scenario.FromSeed(seed));

    /// <summary>Runs one scenario; throws (with what differs) on a lost write or a broken invariant.</summary>
    internal static async Task RunSeedAsync(Scenario s)
    {
        var random = new Random(s.Seed ^ 0x5eed);
        await using var graph = new BlockGraph();
        var sourceMemory = await MemoryDriver.OpenAsync(graph, "src-mem", new MemoryDriverOptions(s.Size));
        var targetMemory = await MemoryDriver.OpenAsync(graph, "dst-mem", new MemoryDriverOptions(s.Size, s.TargetZeroInit));
        var source = await JitterFilter.OpenAsync(graph, "src", sourceMemory, s.Seed);
        var target = await JitterFilter.OpenAsync(graph, "dst", targetMemory, s.Seed + 1);
        var vm = graph.AttachRoot(source, new RootParent("vm"));

        // Initial content: random data in random places, the rest zero.
        var model = new byte[s.Size];
        for (var i = 0; i < 8; i++)
        {
            var offset = random.NextInt64(s.Size);
            var length = (int)Math.Min(random.Next(1, 32768), s.Size - offset);
            random.NextBytes(model.AsSpan((int)offset, length));
            await vm.WriteAsync(offset, model.AsMemory((int)offset, length));
        }

        if (s.Sync == MirrorSyncMode.None)
        {
            // sync=none copies only new writes: start from a target that already equals the source.
            await targetMemory.WriteAsync(0, model);
        }

        var manager = new JobManager();
        var events = new ConcurrentQueue<JobEvent>();
        using var subscription = manager.Events.Subscribe(events.Enqueue);
        var locks = new RangeLock();
        using var stop = new CancellationTokenSource();
        Task[] StartWriters() => Enumerable.Range(0, s.Writers)
            .Select(w => Task.Run(() => WriterAsync(vm, model, locks, new Random(s.Seed * 31 + w), (int)s.Granularity, stop.Token)))
            .ToArray();

        // sync=none copies only what is written once the job runs: a write that completes before the
        // start is on the source only, by definition, so those writers start after it (seed 372 caught a
        // write that slipped in first). The other modes copy everything: their writers start first.
        var writers = s.Sync == MirrorSyncMode.None ? [] : StartWriters();

        var options = new MirrorOptions
        {
            JobId = "mirror",
            Sync = s.Sync,
            Granularity = s.Granularity,
            BufSize = s.BufSize,
            AutoFinalize = s.AutoFinalize,
        };
        var job = await MirrorJob.StartAsync(manager, graph, source, target, options);
        if (s.Sync == MirrorSyncMode.None)
        {
            writers = StartWriters();
        }

        string? pointInTimeProblem = null;

        try
        {
            await DisturbAsync(job, random, s);

            if (s.Ending == Ending.ForceCancel)
            {
                await job.CancelAsync(force: true);
            }
            else
            {
                await MirrorTestRunner.WaitReadyAsync(manager, job);
                await DisturbAsync(job, random, s);
                if (s.Ending == Ending.Complete)
                {
                    job.Complete();
                }
                else
                {
                    await job.CancelAsync(force: false);
                }

                if (!s.AutoFinalize)
                {
                    // Pending: the source is still drained, so the writers are held and the target must
                    // equal the source right now (the point-in-time copy, or the state at the pivot).
                    await WaitStatusAsync(job, JobStatus.Pending);
                    pointInTimeProblem = await CompareAsync(sourceMemory, targetMemory, s.Size);
                    await job.FinalizeAsync();
                }
            }

            await MirrorTestRunner.WaitFinishedAsync(job);
        }
        finally
        {
            // Let the writers run on whatever they now point at, then stop them.
            await Task.Delay(random.Next(0, 5));
            await stop.CancelAsync();
            await Task.WhenAll(writers);
        }

        if (pointInTimeProblem is not null)
        {
            throw new InvalidOperationException($"at the switch the target differed from the source: {pointInTimeProblem}");
        }

        CheckEventSequence(events.ToArray(), s);
        if (graph.Nodes.Any(n => n.Driver.DriverName == MirrorTopFilter.Name))
        {
            throw new InvalidOperationException("the mirror-top filter is still in the graph");
        }

        if (sourceMemory.DirtyBitmaps.Count != 0)
        {
            throw new InvalidOperationException("the job's dirty bitmap was not released");
        }

        switch (s.Ending)
        {
            case Ending.Complete when job.Error is null:
                Require(ReferenceEquals(vm.Node, target), "the writers were not moved to the target");
                var lost = await CompareModelAsync(targetMemory, model);
                Require(lost is null, $"a write was lost: {lost}");
                break;
            case Ending.CancelAfterReady:
                Require(job.Error is null, $"a cancel after READY must complete without error, got {job.Error}");
                Require(ReferenceEquals(vm.Node, source), "a cancel must leave the writers on the source");
                var differs = await CompareModelAsync(sourceMemory, model);
                Require(differs is null, $"the source lost a write: {differs}");
                break;
            default:
                Require(job.Status == JobStatus.Null || job.Error is not null || s.Ending != Ending.Complete, "job did not end");
                Require(ReferenceEquals(vm.Node, s.Ending == Ending.Complete && job.Error is null ? target : source), "the writers point at the wrong node");
                var bad = await CompareModelAsync(vm.Node.FilteredChild!.Node, model);
                Require(bad is null, $"a write was lost: {bad}");
                break;
        }

        static void Require(bool condition, string message)
        {
            if (!condition)
            {
                throw new InvalidOperationException(message);
            }
        }
    }

    /// <summary>Random pauses, resumes and speed changes for a short while.</summary>
    static async Task DisturbAsync(MirrorJob job, Random random, Scenario s)
    {
        var steps = random.Next(0, 4);
        for (var i = 0; i < steps; i++)
        {
            await Task.Delay(random.Next(0, 3));
            if (job.Finished.IsCompleted)
            {
                return;
            }

            try
            {
                if (s.Pauses && random.Next(2) == 0)
                {
                    job.Pause();
                    await Task.Delay(random.Next(0, 3));
                    job.Resume();
                }

                if (s.SpeedChanges)
                {
                    // Fast enough that a limited job still finishes well inside the time limit.
                    job.SetSpeed(random.Next(2) == 0 ? 0 : s.Size * 20);
                }
            }
            catch (JobException)
            {
                // The job moved on meanwhile (e.g. already pending): the verb was refused, nothing changed.
            }
        }

        if (s.SpeedChanges)
        {
            try
            {
                job.SetSpeed(0);
            }
            catch (JobException)
            {
            }
        }
    }

    static async Task WriterAsync(NodeEdge vm, byte[] model, RangeLock locks, Random random, int granularity, CancellationToken stop)
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
            using (await locks.AcquireAsync(offset, length))
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
                        // The memory driver's discard reads back zeroes.
                        await vm.DiscardAsync(offset, length, CancellationToken.None);
                        model.AsSpan((int)offset, length).Clear();
                        break;
                }
            }

            // A burst at full speed, then calm: background mirroring converges only while writers dirty
            // chunks more slowly than the job copies them (a one-chunk buffer copies one chunk at a time),
            // so calm writers touch at most two chunks every few milliseconds. They still write through
            // READY, the drain and the pivot.
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

    static async Task WaitStatusAsync(Job job, JobStatus status)
    {
        var deadline = DateTime.UtcNow + MirrorTestRunner.Limit;
        while (job.Status != status)
        {
            if (job.Finished.IsCompleted || DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"job never reached {status.ToWireName()} (now {job.Status.ToWireName()}, error {job.Error})");
            }

            await Task.Delay(1);
        }
    }

    static async Task<string?> CompareAsync(BlockNode a, BlockNode b, long size)
    {
        var left = new byte[size];
        var right = new byte[size];
        await a.ReadAsync(0, left);
        await b.ReadAsync(0, right);
        var common = left.AsSpan().CommonPrefixLength(right);
        return common == size ? null : $"first difference at offset {common}";
    }

    static async Task<string?> CompareModelAsync(BlockNode node, byte[] model)
    {
        var actual = new byte[model.LongLength];
        await node.ReadAsync(0, actual);
        var common = actual.AsSpan().CommonPrefixLength(model);
        return common == model.Length ? null : $"first difference at offset {common} of {model.Length}";
    }

    /// <summary>Every JOB_STATUS_CHANGE follows the transition table, and the job ends with the right final event.</summary>
    static void CheckEventSequence(JobEvent[] events, Scenario s)
    {
        var status = JobStatus.Undefined;
        foreach (var change in events.OfType<JobStatusChangeEvent>())
        {
            if (!JobStateTable.CanTransition(status, change.Status))
            {
                throw new InvalidOperationException($"illegal transition {status.ToWireName()} -> {change.Status.ToWireName()}");
            }

            status = change.Status;
        }

        if (status != JobStatus.Null)
        {
            throw new InvalidOperationException($"the job ended in {status.ToWireName()}, not null");
        }

        var final = events.Where(e => e is BlockJobCompletedEvent or BlockJobCancelledEvent).ToArray();
        if (final.Length != 1)
        {
            throw new InvalidOperationException($"expected one final event, got {final.Length}");
        }

        var expectCancelled = s.Ending == Ending.ForceCancel;
        if (expectCancelled != final[0] is BlockJobCancelledEvent)
        {
            throw new InvalidOperationException($"expected {(expectCancelled ? "BLOCK_JOB_CANCELLED" : "BLOCK_JOB_COMPLETED")}, got {final[0].Name}");
        }

        if (final[0] is BlockJobCompletedEvent { Error: { } error })
        {
            throw new InvalidOperationException($"the job failed: {error}");
        }

        if (events.Count(e => e is BlockJobReadyEvent) > 1)
        {
            throw new InvalidOperationException("BLOCK_JOB_READY was emitted more than once");
        }
    }
}
