using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
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
    internal sealed record Scenario(int Seed, long Size, long Granularity, long BufSize, int Writers, bool TargetZeroInit,
        MirrorSyncMode Sync, bool AutoFinalize, JobEnding Ending, bool Pauses, bool SpeedChanges)
    {
        public static Scenario FromSeed(int seed)
        {
            var random = new Random(seed);
            var granularity = ConcurrencyHarness.DrawGranularity(random);

            // Sizes that are and are not multiples of the granularity, so the tail chunk is exercised.
            var size = ConcurrencyHarness.DrawSize(random);
            var bufSize = granularity * (1L << random.Next(0, 6));
            var ending = ConcurrencyHarness.DrawEnding(random);
            return new Scenario(seed, size, granularity, bufSize, random.Next(1, 9), random.Next(2) == 0,
                random.Next(5) == 0 ? MirrorSyncMode.None : MirrorSyncMode.Full, random.Next(2) == 0, ending,
                random.Next(3) == 0, random.Next(6) == 0);
        }

        // Speed changes fast enough that a limited job still finishes well inside the time limit.
        public ConcurrencyHarness.Plan Plan => new(Seed, Writers, Ending, AutoFinalize, Pauses, SpeedChanges, Size * 20);
    }

    [Fact]
    public Task Random_writers_never_lose_a_write_across_seeds() =>
        ConcurrencyHarness.RunSeedsAsync(output, 2000, Scenario.FromSeed, RunSeedAsync);

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

        var model = new byte[s.Size];
        await ConcurrencyHarness.FillRandomAsync(vm, model, random);

        if (s.Sync == MirrorSyncMode.None)
        {
            // sync=none copies only new writes: start from a target that already equals the source.
            await targetMemory.WriteAsync(0, model);
        }

        var manager = new JobManager();
        using var writers = new ConcurrentWriters(vm, model, (int)s.Granularity, discardZeroes: true);
        var options = new MirrorOptions
        {
            JobId = "mirror",
            Sync = s.Sync,
            Granularity = s.Granularity,
            BufSize = s.BufSize,
            AutoFinalize = s.AutoFinalize,
        };

        // sync=none copies only what is written once the job runs: a write that completes before the
        // start is on the source only, by definition, so those writers start after it (seed 372 caught a
        // write that slipped in first). The other modes copy everything: their writers start first.
        var job = await ConcurrencyHarness.RunAsync(manager, writers, s.Plan, random,
            () => MirrorJob.StartAsync(manager, graph, source, target, options),
            () => ConcurrencyHarness.CompareAsync(sourceMemory, targetMemory),
            writersAfterStart: s.Sync == MirrorSyncMode.None);
        ConcurrencyHarness.CheckJobLeftNothing(graph, source);

        switch (s.Ending)
        {
            case JobEnding.Complete when job.Error is null:
                Require(ReferenceEquals(vm.Node, target), "the writers were not moved to the target");
                var lost = await ConcurrencyHarness.CompareModelAsync(targetMemory, model);
                Require(lost is null, $"a write was lost: {lost}");
                break;
            case JobEnding.CancelAfterReady:
                Require(job.Error is null, $"a cancel after READY must complete without error, got {job.Error}");
                Require(ReferenceEquals(vm.Node, source), "a cancel must leave the writers on the source");
                var differs = await ConcurrencyHarness.CompareModelAsync(sourceMemory, model);
                Require(differs is null, $"the source lost a write: {differs}");
                break;
            default:
                Require(job.Status == JobStatus.Null || job.Error is not null || s.Ending != JobEnding.Complete, "job did not end");
                Require(ReferenceEquals(vm.Node, s.Ending == JobEnding.Complete && job.Error is null ? target : source), "the writers point at the wrong node");
                var bad = await ConcurrencyHarness.CompareModelAsync(vm.Node.FilteredChild!.Node, model);
                Require(bad is null, $"a write was lost: {bad}");
                break;
        }

        static void Require(bool condition, string message) => ConcurrencyHarness.Require(condition, message);
    }
}
