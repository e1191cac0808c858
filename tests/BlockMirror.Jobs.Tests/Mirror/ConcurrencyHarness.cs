using System.Collections.Concurrent;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;
using Xunit.Abstractions;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// What the randomized concurrency tests of mirror (sync full/none/top) and active commit share: running
/// seeds two at a time, ending a job the way a user would with pauses and speed changes on the way, and
/// the checks on data and events afterwards.
/// </summary>
static class ConcurrencyHarness
{
    /// <summary>How long one seed may take before it counts as hung.</summary>
    static readonly TimeSpan SeedLimit = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Runs every seed (0..n-1, n from BLOCKMIRROR_SEEDS or <paramref name="ciDefault"/>), two at a time so
    /// both cores are busy and the interleavings differ from a single run; stops at the first failure and
    /// fails naming its scenario, to be replayed and kept as a named test.
    /// </summary>
    public static async Task RunSeedsAsync<TScenario>(ITestOutputHelper output, int ciDefault, Func<int, TScenario> scenario, Func<TScenario, Task> run)
    {
        var seeds = Seeds.Range(ciDefault).ToArray();
        var failures = new ConcurrentBag<string>();
        var next = -1;
        var workers = Enumerable.Range(0, 2).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                var index = Interlocked.Increment(ref next);
                if (index >= seeds.Length || !failures.IsEmpty)
                {
                    return;
                }

                var s = scenario(seeds[index]);
                try
                {
                    await run(s).WaitAsync(SeedLimit);
                }
                catch (Exception ex)
                {
                    failures.Add($"{s}: {ex}");
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

    /// <summary>A chunk size from the smallest (512 bytes) to 64 KiB.</summary>
    public static long DrawGranularity(Random random)
    {
        long[] granularities = [512, 1024, 4096, 16384, 65536];
        return granularities[random.Next(granularities.Length)];
    }

    /// <summary>A disk size of 64 KiB..512 KiB, a third of the time with a tail that is no multiple of a chunk.</summary>
    public static long DrawSize(Random random) =>
        random.Next(64, 512) * 1024L + (random.Next(3) == 0 ? random.Next(1, 64) * 512L : 0);

    /// <summary>Complete six times in ten, cancel after READY twice, forced cancel twice.</summary>
    public static JobEnding DrawEnding(Random random) => random.Next(10) switch
    {
        < 6 => JobEnding.Complete,
        < 8 => JobEnding.CancelAfterReady,
        _ => JobEnding.ForceCancel,
    };

    /// <summary>
    /// The initial content of a concurrency test's source: random data in eight random places, the rest
    /// zero, written through <paramref name="vm"/> and kept in <paramref name="model"/>.
    /// </summary>
    public static async Task FillRandomAsync(NodeEdge vm, byte[] model, Random random)
    {
        var size = model.LongLength;
        for (var i = 0; i < 8; i++)
        {
            var offset = random.NextInt64(size);
            var length = (int)Math.Min(random.Next(1, 32768), size - offset);
            random.NextBytes(model.AsSpan((int)offset, length));
            await vm.WriteAsync(offset, model.AsMemory((int)offset, length));
        }
    }

    /// <summary>What a scenario decides about the writers and the job's life, whatever the job.</summary>
    /// <param name="Speed">The limit that speed changes set, when <paramref name="SpeedChanges"/>.</param>
    public sealed record Plan(int Seed, int Writers, JobEnding Ending, bool AutoFinalize, bool Pauses, bool SpeedChanges, long Speed);

    /// <summary>
    /// Starts the writers and the job (the writers after it when <paramref name="writersAfterStart"/>),
    /// disturbs the job, ends it as the plan says, lets the writers go on a moment and stops them; then
    /// checks what <paramref name="atSwitch"/> found and the job's events. Without auto-finalize,
    /// <paramref name="atSwitch"/> runs while the job is pending: the source is still drained, so the
    /// writers are held and the target must equal the source right then (the point-in-time copy, or the
    /// state at the pivot); it returns what it found wrong, or null.
    /// </summary>
    public static async Task<MirrorJob> RunAsync(JobManager manager, ConcurrentWriters writers, Plan plan, Random random,
        Func<Task<MirrorJob>> start, Func<Task<string?>> atSwitch, bool writersAfterStart = false)
    {
        var events = new ConcurrentQueue<JobEvent>();
        using var subscription = manager.Events.Subscribe(events.Enqueue);
        MirrorJob job;
        string? problem;
        try
        {
            if (!writersAfterStart)
            {
                writers.Start(plan.Writers, plan.Seed);
            }

            job = await start();
            if (writersAfterStart)
            {
                writers.Start(plan.Writers, plan.Seed);
            }

            problem = await EndJobAsync(manager, job, random, plan, atSwitch);
        }
        finally
        {
            await writers.StopAsync(random);
        }

        Require(problem is null, $"at the switch the target differed from the source: {problem}");
        CheckEventSequence([.. events], plan.Ending);
        return job;
    }

    static async Task<string?> EndJobAsync(JobManager manager, MirrorJob job, Random random, Plan plan, Func<Task<string?>> atSwitch)
    {
        await DisturbAsync(job, random, plan);
        if (plan.Ending == JobEnding.ForceCancel)
        {
            await job.CancelAsync(force: true);
            await MirrorTestRunner.WaitFinishedAsync(job);
            return null;
        }

        string? problem = null;
        await MirrorTestRunner.WaitReadyAsync(manager, job);
        await DisturbAsync(job, random, plan);
        if (plan.Ending == JobEnding.Complete)
        {
            job.Complete();
        }
        else
        {
            await job.CancelAsync(force: false);
        }

        if (!plan.AutoFinalize)
        {
            await WaitStatusAsync(job, JobStatus.Pending);
            problem = await atSwitch();
            await job.FinalizeAsync();
        }

        await MirrorTestRunner.WaitFinishedAsync(job);
        return problem;
    }

    /// <summary>Random pauses, resumes and speed changes for a short while.</summary>
    static async Task DisturbAsync(MirrorJob job, Random random, Plan d)
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
                if (d.Pauses && random.Next(2) == 0)
                {
                    job.Pause();
                    await Task.Delay(random.Next(0, 3));
                    job.Resume();
                }

                if (d.SpeedChanges)
                {
                    job.SetSpeed(random.Next(2) == 0 ? 0 : d.Speed);
                }
            }
            catch (JobException)
            {
                // The job moved on meanwhile (e.g. already pending): the verb was refused, nothing changed.
            }
        }

        if (d.SpeedChanges)
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

    /// <summary>Waits until the job is in <paramref name="status"/>; fails if it ends first or takes too long.</summary>
    public static async Task WaitStatusAsync(Job job, JobStatus status)
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

    /// <summary>Null when the two nodes read the same bytes, else where they first differ.</summary>
    public static async Task<string?> CompareAsync(BlockNode a, BlockNode b) =>
        await CompareModelAsync(b, await MirrorRig.ReadAllAsync(a));

    /// <summary>Null when the node reads what the model says, else where it first differs.</summary>
    public static async Task<string?> CompareModelAsync(BlockNode node, byte[] model)
    {
        var actual = await MirrorRig.ReadAllAsync(node);
        return Difference(model, actual);
    }

    /// <summary>Null when the two are the same bytes, else where they first differ.</summary>
    public static string? Difference(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual)
    {
        var common = actual.CommonPrefixLength(expected);
        if (common == expected.Length && actual.Length == expected.Length)
        {
            return null;
        }

        if (common >= actual.Length || common >= expected.Length)
        {
            return $"lengths differ: {actual.Length} against {expected.Length}";
        }

        // How far the difference runs, and what each side holds there, tells a stale copy from a lost write.
        var run = 1;
        while (common + run < expected.Length && actual[common + run] != expected[common + run])
        {
            run++;
        }

        return $"first difference at offset {common} of {expected.Length}: {run} bytes differ from there (expected 0x{expected[common]:x2}, found 0x{actual[common]:x2})";
    }

    public static void Require(bool condition, string message)
    {
        if (!condition)
        {
            throw new InvalidOperationException(message);
        }
    }

    /// <summary>The job left no filter and no dirty bitmap behind.</summary>
    public static void CheckJobLeftNothing(BlockGraph graph, BlockNode source)
    {
        Require(!graph.Nodes.Any(n => n.Driver.DriverName == MirrorTopFilter.Name), "the mirror-top filter is still in the graph");
        Require(source.DirtyBitmaps.Count == 0, "the job's dirty bitmap was not released");
    }

    /// <summary>
    /// Every JOB_STATUS_CHANGE follows the transition table, and the job ends with the right final event:
    /// BLOCK_JOB_COMPLETED with an error when <paramref name="failed"/> (an error the policy reported).
    /// </summary>
    public static void CheckEventSequence(JobEvent[] events, JobEnding ending, bool failed = false)
    {
        var status = JobStatus.Undefined;
        foreach (var change in events.OfType<JobStatusChangeEvent>())
        {
            Require(JobStateTable.CanTransition(status, change.Status), $"illegal transition {status.ToWireName()} -> {change.Status.ToWireName()}");
            status = change.Status;
        }

        Require(status == JobStatus.Null, $"the job ended in {status.ToWireName()}, not null");
        var final = events.Where(e => e is BlockJobCompletedEvent or BlockJobCancelledEvent).ToArray();
        Require(final.Length == 1, $"expected one final event, got {final.Length}");

        if (failed)
        {
            Require(final[0] is BlockJobCompletedEvent { Error: not null }, $"expected BLOCK_JOB_COMPLETED with an error, got {EventLog.Describe(final[0])}");
            return;
        }

        var expectCancelled = ending == JobEnding.ForceCancel;
        Require(expectCancelled == final[0] is BlockJobCancelledEvent,
            $"expected {(expectCancelled ? "BLOCK_JOB_CANCELLED" : "BLOCK_JOB_COMPLETED")}, got {final[0].Name}");
        Require(final[0] is not BlockJobCompletedEvent { Error: not null }, $"the job failed: {(final[0] as BlockJobCompletedEvent)?.Error}");
        Require(events.Count(e => e is BlockJobReadyEvent) <= 1, "BLOCK_JOB_READY was emitted more than once");
    }
}
