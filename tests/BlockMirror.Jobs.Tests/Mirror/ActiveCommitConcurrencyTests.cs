using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;
using Xunit.Abstractions;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// <see cref="MirrorConcurrencyTests"/> for active commit on qcow2: base ← (mid) ← top, random writers on
/// the top while what lies above the base is mirrored down into it. After completion the writers use the
/// base, which alone (no backing) must read what the model says; after a cancel the top must, and the
/// base is read-only again. Every image is checked (qemu-img check) at the end.
/// </summary>
/// <remarks>
/// The base is sometimes smaller than the top (the job grows it), and the chain is opened either from
/// the headers or node by node with a jitter filter under each image.
/// </remarks>
public sealed class ActiveCommitConcurrencyTests(ITestOutputHelper output)
{
    internal sealed record Scenario(int Seed, long Size, long BaseSize, int BaseCluster, int MidCluster, int TopCluster, bool Mid,
        long Granularity, long BufSize, int Writers, bool ChainFromHeader, bool Unmap, bool AutoFinalize, JobEnding Ending, bool Pauses,
        bool SpeedChanges)
    {
        public static Scenario FromSeed(int seed)
        {
            var random = new Random(seed);
            int Cluster() => Qcow2Images.ClusterSizes[random.Next(Qcow2Images.ClusterSizes.Length)];
            var granularity = ConcurrencyHarness.DrawGranularity(random);
            var size = ConcurrencyHarness.DrawSize(random);
            var baseSize = random.Next(4) == 0 ? size - random.Next(1, (int)(size / 1024)) * 512L : size;
            var ending = ConcurrencyHarness.DrawEnding(random);
            return new Scenario(seed, size, baseSize, Cluster(), Cluster(), Cluster(), random.Next(2) == 0, granularity,
                granularity * (1L << random.Next(0, 6)), random.Next(1, 9), random.Next(2) == 0, random.Next(2) == 0, random.Next(2) == 0,
                ending, random.Next(3) == 0, random.Next(6) == 0);
        }

        public ConcurrencyHarness.Plan Plan => new(Seed, Writers, Ending, AutoFinalize, Pauses, SpeedChanges, Size * 20);
    }

    [Fact]
    public Task Random_writers_never_lose_a_write_across_seeds() =>
        ConcurrencyHarness.RunSeedsAsync(output, 300, Scenario.FromSeed, RunSeedAsync);

    /// <summary>Runs one scenario; throws (with what differs) on a lost write or a broken invariant.</summary>
    internal static async Task RunSeedAsync(Scenario s)
    {
        var random = new Random(s.Seed ^ 0x5eed);
        using var dir = TempDirectory.InMemory("blockmirror-commit-");
        var (basePath, midPath, topPath) = (dir.File("base.qcow2"), dir.File("mid.qcow2"), dir.File("top.qcow2"));
        var topBacking = s.Mid ? midPath : basePath;
        Qcow2Create.Create(basePath, new Qcow2CreateOptions { Size = s.BaseSize, ClusterSize = s.BaseCluster });
        Qcow2Create.Create(midPath, new Qcow2CreateOptions { Size = s.Size, ClusterSize = s.MidCluster, BackingFile = basePath, BackingFormat = "qcow2" });
        Qcow2Create.Create(topPath, new Qcow2CreateOptions { Size = s.Size, ClusterSize = s.TopCluster, BackingFile = topBacking, BackingFormat = "qcow2" });
        var model = new byte[s.Size];
        await Qcow2Images.FillAsync(basePath, model, s.BaseSize, random, 8);
        if (s.Mid)
        {
            await Qcow2Images.FillAsync(midPath, model, s.Size, random, random.Next(0, 8));
        }

        await Qcow2Images.FillAsync(topPath, model, s.Size, random, random.Next(0, 8));

        var discard = s.Unmap ? FileDiscardMode.Unmap : FileDiscardMode.Ignore;
        await using (var graph = new BlockGraph())
        {
            var top = await OpenChainAsync(graph, s, basePath, midPath, topPath, discard);
            var @base = BlockChain.Layers(top).Last();
            var guest = await JitterFilter.OpenAsync(graph, "guest", top, s.Seed);
            var vm = graph.AttachRoot(guest, new RootParent("vm"));
            Require(await ConcurrencyHarness.CompareModelAsync(top, model) is null, "the chain does not read its initial content");

            var manager = new JobManager();
            using var writers = new ConcurrentWriters(vm, model, (int)s.Granularity, discardZeroes: false);
            var options = new MirrorOptions { JobId = "commit", Granularity = s.Granularity, BufSize = s.BufSize, AutoFinalize = s.AutoFinalize };
            var job = await ConcurrencyHarness.RunAsync(manager, writers, s.Plan, random,
                () => MirrorJob.StartActiveCommitAsync(manager, graph, top, @base, options),
                () => ConcurrencyHarness.CompareAsync(top, @base));
            ConcurrencyHarness.CheckJobLeftNothing(graph, top);

            // A forced cancel ends with ECANCELED as the job's error; the other endings with none.
            Require(s.Ending == JobEnding.ForceCancel || job.Error is null, $"the job failed: {job.Error}");
            Require(@base.Backing is null, "the base has a backing node");
            if (s.Ending == JobEnding.Complete)
            {
                Require(ReferenceEquals(guest.FilteredChild!.Node, @base), "the writers were not moved to the base");
                Require(!@base.ReadOnly, "the base the writers use is read-only");
                var lost = await ConcurrencyHarness.CompareModelAsync(@base, model);
                Require(lost is null, $"a write was lost: {lost}");
            }
            else
            {
                Require(ReferenceEquals(guest.FilteredChild!.Node, top), "a cancel must leave the writers on the top");
                Require(@base.ReadOnly, "the base was not made read-only again");
                var differs = await ConcurrencyHarness.CompareModelAsync(top, model);
                Require(differs is null, $"the top lost a write: {differs}");
            }
        }

        if (s.Ending == JobEnding.Complete)
        {
            // Closed and opened again alone: the base holds everything.
            var onDisk = await Qcow2Images.CompareFileAsync(basePath, model);
            Require(onDisk is null, $"the base image, opened again, differs: {onDisk}");
        }

        string[] images = s.Mid ? [basePath, midPath, topPath] : [basePath, topPath];
        await Qcow2Images.CheckAsync(images);

        static void Require(bool condition, string message) => ConcurrencyHarness.Require(condition, message);
    }

    /// <summary>
    /// The top, read-write, over its chain: opened from the headers (the lower images read-only for being
    /// backing files), or node by node with a jitter filter under each, the lower ones marked the same way.
    /// </summary>
    static async Task<BlockNode> OpenChainAsync(BlockGraph graph, Scenario s, string basePath, string midPath, string topPath, FileDiscardMode discard)
    {
        if (s.ChainFromHeader)
        {
            return await Qcow2Images.OpenAsync(graph, topPath, "top", false, new Qcow2Options(), discard, s.Seed + 1);
        }

        var below = await Qcow2Images.OpenAsync(graph, basePath, "base", true, new Qcow2Options(), discard, s.Seed + 2);
        below.AutoReadOnly = true;
        if (s.Mid)
        {
            below = await Qcow2Images.OpenAsync(graph, midPath, "mid", true, new Qcow2Options { Backing = Qcow2BackingMode.Node, BackingNode = below }, discard, s.Seed + 3);
            below.AutoReadOnly = true;
        }

        return await Qcow2Images.OpenAsync(graph, topPath, "top", false, new Qcow2Options { Backing = Qcow2BackingMode.Node, BackingNode = below }, discard, s.Seed + 1);
    }
}
