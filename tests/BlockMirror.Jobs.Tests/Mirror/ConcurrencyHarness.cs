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

    /// <summary>
    /// Disturbs the job, then ends it as <paramref name="ending"/> says and waits for the end. Without
    /// auto-finalize, <paramref name="atSwitch"/> runs while the job is pending: the source is still
    /// drained, so the writers are held and the target must equal the source right then (the
    /// point-in-time copy, or the state at the pivot). Returns what it found wrong, or null.
    /// </summary>
    public static async Task<string?> EndJobAsync(JobManager manager, MirrorJob job, Random random, JobEnding ending, bool autoFinalize,
        Disturbance disturbance, Func<Task<string?>> atSwitch)
    {
        await DisturbAsync(job, random, disturbance);
        if (ending == JobEnding.ForceCancel)
        {
            await job.CancelAsync(force: true);
            await MirrorTestRunner.WaitFinishedAsync(job);
            return null;
        }

        string? problem = null;
        await MirrorTestRunner.WaitReadyAsync(manager, job);
        await DisturbAsync(job, random, disturbance);
        if (ending == JobEnding.Complete)
        {
            job.Complete();
        }
        else
        {
            await job.CancelAsync(force: false);
        }

        if (!autoFinalize)
        {
            await WaitStatusAsync(job, JobStatus.Pending);
            problem = await atSwitch();
            await job.FinalizeAsync();
        }

        await MirrorTestRunner.WaitFinishedAsync(job);
        return problem;
    }

    /// <summary>Which disturbances a scenario allows; <paramref name="Speed"/> is the limit speed changes set.</summary>
    public sealed record Disturbance(bool Pauses, bool SpeedChanges, long Speed);

    /// <summary>Random pauses, resumes and speed changes for a short while.</summary>
    static async Task DisturbAsync(MirrorJob job, Random random, Disturbance d)
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

    /// <summary>Null when the two nodes read the same bytes, else where they first differ.</summary>
    public static async Task<string?> CompareAsync(BlockNode a, BlockNode b, long size)
    {
        var left = new byte[size];
        await a.ReadAsync(0, left);
        return await CompareModelAsync(b, left);
    }

    /// <summary>Null when the node reads what the model says, else where it first differs.</summary>
    public static async Task<string?> CompareModelAsync(BlockNode node, byte[] model)
    {
        var actual = new byte[model.LongLength];
        await node.ReadAsync(0, actual);
        var common = actual.AsSpan().CommonPrefixLength(model);
        return common == model.Length ? null : $"first difference at offset {common} of {model.Length}";
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

    /// <summary>Every JOB_STATUS_CHANGE follows the transition table, and the job ends with the right final event.</summary>
    public static void CheckEventSequence(JobEvent[] events, JobEnding ending)
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

        var expectCancelled = ending == JobEnding.ForceCancel;
        Require(expectCancelled == final[0] is BlockJobCancelledEvent,
            $"expected {(expectCancelled ? "BLOCK_JOB_CANCELLED" : "BLOCK_JOB_COMPLETED")}, got {final[0].Name}");
        Require(final[0] is not BlockJobCompletedEvent { Error: not null }, $"the job failed: {(final[0] as BlockJobCompletedEvent)?.Error}");
        Require(events.Count(e => e is BlockJobReadyEvent) <= 1, "BLOCK_JOB_READY was emitted more than once");
    }
}
