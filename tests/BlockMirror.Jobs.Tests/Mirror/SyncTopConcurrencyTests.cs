using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;
using Xunit.Abstractions;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// <see cref="MirrorConcurrencyTests"/> for sync=top on qcow2: base ← top, random writers on the top while
/// only what lies above the base is mirrored into a new image that names the base as its backing. After
/// completion the writers use the target, which must read (through the base) what the model says; after
/// a cancel the top must.
/// </summary>
/// <remarks>
/// The target either has the base node open below it from the start, or has not opened its backing at
/// all (QEMU's drive-mirror of a new image): then a chunk smaller than a target cluster must not leave the
/// rest of a freshly allocated cluster to be read, wrongly, from the base later (the COW alignment path),
/// and the base is attached at completion, as the node or from the header. Every image is checked
/// (qemu-img check) at the end.
/// </remarks>
public sealed class SyncTopConcurrencyTests(ITestOutputHelper output)
{
    /// <summary>How the target gets its backing (the base).</summary>
    internal enum TargetBacking
    {
        /// <summary>Opened with the base node below it.</summary>
        BaseNode,

        /// <summary>Opened without backing; the job attaches the source's base node at completion.</summary>
        AttachedAtCompletion,

        /// <summary>Opened without backing; at completion it opens the backing file its header names.</summary>
        OpenedFromHeader,
    }

    internal sealed record Scenario(int Seed, long Size, int BaseCluster, int TopCluster, int TargetCluster, long Granularity, long BufSize,
        int Writers, TargetBacking Backing, bool ChainFromHeader, bool Unmap, bool AutoFinalize, JobEnding Ending, bool Pauses, bool SpeedChanges,
        MirrorCopyMode CopyMode)
    {
        public static Scenario FromSeed(int seed)
        {
            var random = new Random(seed);
            int Cluster() => Qcow2Images.ClusterSizes[random.Next(Qcow2Images.ClusterSizes.Length)];
            var targetCluster = Cluster();

            // Chunks smaller than, equal to and larger than a target cluster.
            var granularity = random.Next(5) == 0 ? 2L * targetCluster : Math.Max(512L, targetCluster >> random.Next(0, 4));
            var size = ConcurrencyHarness.DrawSize(random);
            var ending = ConcurrencyHarness.DrawEnding(random);
            var scenario = new Scenario(seed, size, Cluster(), Cluster(), targetCluster, granularity, granularity * (1L << random.Next(0, 6)),
                random.Next(1, 9), (TargetBacking)random.Next(3), random.Next(2) == 0, random.Next(2) == 0, random.Next(2) == 0, ending,
                random.Next(3) == 0, random.Next(6) == 0, MirrorCopyMode.Background);

            // Drawn last, so every seed keeps the scenario it had before the copy mode was drawn at all.
            return scenario with { CopyMode = (MirrorCopyMode)random.Next(3) };
        }

        public ConcurrencyHarness.Plan Plan => new(Seed, Writers, Ending, AutoFinalize, Pauses, SpeedChanges, Size * 20);
    }

    [Fact]
    public Task Random_writers_never_lose_a_write_across_seeds() =>
        ConcurrencyHarness.RunSeedsAsync(output, 300, Scenario.FromSeed, RunSeedAsync);

    /// <summary>
    /// Replays single seeds (each failed on some runs only: the interleavings vary). Kept: 0, where a forced
    /// cancel cut a target write short inside a qcow2 metadata change and leaked a cluster, and 531, where a
    /// run of chunks ending in a target cluster never copied was not widened to whole clusters; and 47
    /// (write-blocking, the target's backing opened only at completion), where a guest write into part of a
    /// target cluster the target had not allocated made it fill the rest with zeroes, hiding the base's data.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(531)]
    [InlineData(47)]
    public Task Replay_seed(int seed) => RunSeedAsync(Scenario.FromSeed(seed));

    /// <summary>Runs one scenario; throws (with what differs) on a lost write or a broken invariant.</summary>
    internal static async Task RunSeedAsync(Scenario s)
    {
        var random = new Random(s.Seed ^ 0x5eed);
        using var dir = TempDirectory.InMemory("blockmirror-synctop-");
        var (basePath, topPath, targetPath) = (dir.File("base.qcow2"), dir.File("top.qcow2"), dir.File("target.qcow2"));
        Qcow2Create.Create(basePath, new Qcow2CreateOptions { Size = s.Size, ClusterSize = s.BaseCluster });
        Qcow2Create.Create(topPath, new Qcow2CreateOptions { Size = s.Size, ClusterSize = s.TopCluster, BackingFile = basePath, BackingFormat = "qcow2" });
        Qcow2Create.Create(targetPath, new Qcow2CreateOptions { Size = s.Size, ClusterSize = s.TargetCluster, BackingFile = basePath, BackingFormat = "qcow2" });
        var model = new byte[s.Size];
        await Qcow2Images.FillAsync(basePath, model, s.Size, random, 8);
        await Qcow2Images.FillAsync(topPath, model, s.Size, random, random.Next(0, 8));

        var discard = s.Unmap ? FileDiscardMode.Unmap : FileDiscardMode.Ignore;
        await using (var graph = new BlockGraph())
        {
            var top = s.ChainFromHeader
                ? await Qcow2Images.OpenAsync(graph, topPath, "top", false, new Qcow2Options(), discard, s.Seed + 1)
                : await Qcow2Images.OpenAsync(graph, topPath, "top", false,
                    new Qcow2Options { Backing = Qcow2BackingMode.Node, BackingNode = await Qcow2Images.OpenAsync(graph, basePath, "base", true, new Qcow2Options(), discard, s.Seed + 2) },
                    discard, s.Seed + 1);
            var @base = top.Backing!;
            var targetOptions = s.Backing == TargetBacking.BaseNode
                ? new Qcow2Options { Backing = Qcow2BackingMode.Node, BackingNode = @base }
                : new Qcow2Options { Backing = Qcow2BackingMode.None };
            var target = await Qcow2Images.OpenAsync(graph, targetPath, "dst", false, targetOptions, discard, s.Seed + 3);
            var guest = await JitterFilter.OpenAsync(graph, "guest", top, s.Seed);
            var vm = graph.AttachRoot(guest, new RootParent("vm"));
            ConcurrencyHarness.Require(await ConcurrencyHarness.CompareModelAsync(top, model) is null, "the chain does not read its initial content");

            var manager = new JobManager();
            using var writers = new ConcurrentWriters(vm, model, (int)s.Granularity, discardZeroes: false);
            var options = new MirrorOptions
            {
                JobId = "mirror",
                Sync = MirrorSyncMode.Top,
                CopyMode = s.CopyMode,
                Granularity = s.Granularity,
                BufSize = s.BufSize,
                AutoFinalize = s.AutoFinalize,
                BackingMode = s.Backing == TargetBacking.OpenedFromHeader ? MirrorBackingMode.OpenBackingChain : MirrorBackingMode.SourceBackingChain,
            };
            var job = await ConcurrencyHarness.RunAsync(manager, writers, s.Plan, random,
                () => MirrorJob.StartAsync(manager, graph, top, target, options),
                async () =>
                {
                    // The target's backing may not be open yet: compare what it will read once it is.
                    var expected = await MirrorRig.ReadAllAsync(top);
                    var actual = await Qcow2Images.ReadAsIfBackedAsync(target, @base);
                    return ConcurrencyHarness.Difference(expected, actual);
                });
            ConcurrencyHarness.CheckJobLeftNothing(graph, top);

            // A forced cancel ends with ECANCELED as the job's error; the other endings with none.
            Require(s.Ending == JobEnding.ForceCancel || job.Error is null, $"the job failed: {job.Error}");
            if (s.Ending == JobEnding.Complete)
            {
                Require(ReferenceEquals(guest.FilteredChild!.Node, target), "the writers were not moved to the target");
                Require(target.Backing is { } backing && backing.File!.Node.Driver.FileName == basePath, "the target is not backed by the base");
                var lost = await ConcurrencyHarness.CompareModelAsync(target, model);
                Require(lost is null, $"a write was lost: {lost}");
            }
            else
            {
                Require(ReferenceEquals(guest.FilteredChild!.Node, top), "a cancel must leave the writers on the top");
                var differs = await ConcurrencyHarness.CompareModelAsync(top, model);
                Require(differs is null, $"the top lost a write: {differs}");
            }
        }

        if (s.Ending == JobEnding.Complete)
        {
            // Closed and opened again by its header: the target's own clusters and the base, nothing else.
            var onDisk = await Qcow2Images.CompareFileAsync(targetPath, model);
            Require(onDisk is null, $"the target image, opened again, differs: {onDisk}");
        }

        await Qcow2Images.CheckAsync(basePath, topPath, targetPath);

        static void Require(bool condition, string message) => ConcurrencyHarness.Require(condition, message);
    }
}
