using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>Bugs found by the demo and the randomized tests, kept as named tests.</summary>
public sealed class MirrorRegressionTests : IDisposable
{
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>
    /// Found by `blockmirror demo`: a 64 KiB chunk whose first 4 KiB is a hole and which holds data further
    /// in was zeroed on the target, because the short zero run decided the method for the whole chunk.
    /// </summary>
    [Fact]
    public async Task A_chunk_that_starts_with_a_hole_and_holds_data_later_is_copied_not_zeroed()
    {
        const long size = 1 << 20;
        var sourcePath = _dir.File("source.raw");
        var targetPath = _dir.File("target.raw");
        ImageFiles.Create(sourcePath, "raw", size);
        ImageFiles.Create(targetPath, "raw", size);
        await using var graph = new BlockGraph();
        var source = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(sourcePath, "raw", NodeName: "src"));
        var target = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(targetPath, "raw", NodeName: "dst"));

        // Data at 4 KiB..8 KiB of the chunk at 64 KiB; the rest of the file is holes.
        var data = Enumerable.Repeat((byte)0x5c, 4096).ToArray();
        await source.WriteAsync(65536 + 4096, data);
        var status = await source.GetBlockStatusAsync(65536, 65536);
        Assert.True(status.IsZero && status.Length == 4096, $"the file system must report the 4 KiB hole first, got {status}");

        var manager = new JobManager();
        var job = await MirrorJob.StartAsync(manager, graph, source, target, new MirrorOptions { JobId = "j", Granularity = 65536 });
        await MirrorTestRunner.CompleteWhenReadyAsync(manager, job);

        var copied = new byte[4096];
        await target.ReadAsync(65536 + 4096, copied);
        Assert.Equal(data, copied);
    }

    /// <summary>
    /// Found by the bad-input tests: granularity 64 MiB (the largest allowed) was refused with "buf-size
    /// expects a value of at least the granularity (67108864 bytes), got 16777216": the default buffer,
    /// which the user never gave, was checked as if given. QEMU rounds the buffer up to the granularity.
    /// </summary>
    [Fact]
    public async Task The_largest_granularity_works_with_the_default_buffer_size()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(new MirrorOptions { JobId = "mirror0", Granularity = 64L << 20 });
        Assert.Equal(64L << 20, job.BufSize);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    /// <summary>
    /// Found by the bad-input tests. Two starts at once: the first waits in its drained section for a write in flight on its source
    /// while the second runs. Both check the id and the nodes before they change the graph, so one must
    /// win and the other must leave nothing behind: no filter above its source, no bitmap, no edge.
    /// Both used to pass the checks: with one id the later registration failed after its filter was in
    /// the graph (an orphan mirror_top stayed above the source); with one source both jobs ran.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Of_two_racing_starts_one_wins_and_the_other_leaves_nothing(bool sameId)
    {
        await using var graph = new BlockGraph();
        var memoryA = await MemoryDriver.OpenAsync(graph, "a-mem", new MemoryDriverOptions(MirrorRig.DefaultSize));
        var sourceA = await GateFilter.OpenAsync(graph, "a", memoryA);
        var vmA = graph.AttachRoot(sourceA, new RootParent("vm-a"), "vm");

        // Same id: two different sources. Same source: two different ids.
        var sourceB = sameId ? await MemoryDriver.OpenAsync(graph, "b", new MemoryDriverOptions(MirrorRig.DefaultSize)) : sourceA;
        var vmB = sameId ? graph.AttachRoot(sourceB, new RootParent("vm-b"), "vm") : vmA;
        var targetA = await MemoryDriver.OpenAsync(graph, "a-dst", new MemoryDriverOptions(MirrorRig.DefaultSize));
        var targetB = await MemoryDriver.OpenAsync(graph, "b-dst", new MemoryDriverOptions(MirrorRig.DefaultSize));
        var manager = new JobManager();

        var write = vmA.WriteAsync(0, Enumerable.Repeat((byte)7, 4096).ToArray()).AsTask();
        await ((GateFilter)sourceA.Driver).WaitArrivedAsync(1);
        var first = OutcomeAsync(MirrorJob.StartAsync(manager, graph, sourceA, targetA, new MirrorOptions { JobId = "j" }));
        var second = OutcomeAsync(MirrorJob.StartAsync(manager, graph, sourceB, targetB, new MirrorOptions { JobId = sameId ? "j" : "k" }));

        // Let the second start get as far as it can before the first one's drain ends.
        await Task.Delay(20);
        ((GateFilter)sourceA.Driver).Open();
        await write;
        var outcomes = await Task.WhenAll(first, second).WaitAsync(MirrorTestRunner.Limit);

        var winner = Assert.Single(outcomes, o => o.Job is not null).Job!;
        var refused = Assert.IsType<JobException>(Assert.Single(outcomes, o => o.Error is not null).Error);
        Assert.Equal(sameId ? "Job ID 'j' already in use" : "Node 'a' is busy: block device is in use by block job: mirror", refused.Message);
        Assert.Equal([winner], manager.Jobs);
        Assert.Equal([winner.FilterNode], graph.Nodes.Where(n => n.Driver.DriverName == "mirror_top"));
        var loserSource = ReferenceEquals(winner.Source, sourceA) ? sourceB : sourceA;
        var loserTarget = ReferenceEquals(winner.Target, targetA) ? targetB : targetA;
        Assert.Empty(loserTarget.Parents);
        Assert.Equal(sameId ? 0 : 1, loserSource.DirtyBitmaps.Count);
        Assert.Single(winner.Source.DirtyBitmaps);
        Assert.Same(sameId ? loserSource : winner.FilterNode, (ReferenceEquals(loserSource, sourceA) ? vmA : vmB).Node);

        await MirrorTestRunner.CompleteWhenReadyAsync(manager, winner);
        Assert.DoesNotContain(graph.Nodes, n => n.Driver.DriverName == "mirror_top");
        Assert.Empty(sourceA.DirtyBitmaps);
        Assert.Empty(sourceB.DirtyBitmaps);
        Assert.Same(winner.Target, (ReferenceEquals(winner.Source, sourceA) ? vmA : vmB).Node);
        MirrorRig.AssertSameBytes(await MirrorRig.ReadAllAsync(winner.Source), await MirrorRig.ReadAllAsync(winner.Target), "target vs source");

        static async Task<(MirrorJob? Job, Exception? Error)> OutcomeAsync(Task<MirrorJob> start)
        {
            try
            {
                return (await start, null);
            }
            catch (Exception ex)
            {
                return (null, ex);
            }
        }
    }
}
