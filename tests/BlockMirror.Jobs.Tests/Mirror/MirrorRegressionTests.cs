using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Drivers.Qcow2;
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

    /// <summary>
    /// Found by the sync=top concurrency test (seed 531): a target that names its backing without having it
    /// open must get whole clusters at their first copy. A run of dirty chunks that started in a cluster
    /// copied before and ended in one never copied was not widened, so the target allocated that cluster
    /// holding only the chunk: once the base was attached the rest of it read zeroes, not the base's data.
    /// </summary>
    [Fact]
    public async Task A_run_ending_in_a_target_cluster_never_copied_copies_that_cluster_whole()
    {
        const long size = 64 * 1024;
        var (basePath, topPath, targetPath) = (_dir.File("base.qcow2"), _dir.File("top.qcow2"), _dir.File("target.qcow2"));
        Qcow2Create.Create(basePath, new Qcow2CreateOptions { Size = size });
        Qcow2Create.Create(topPath, new Qcow2CreateOptions { Size = size, ClusterSize = 4096, BackingFile = basePath });
        Qcow2Create.Create(targetPath, new Qcow2CreateOptions { Size = size, ClusterSize = 4096, BackingFile = basePath });
        var baseData = Enumerable.Repeat((byte)0xba, (int)size).ToArray();
        await using (var setup = new BlockGraph())
        {
            await (await ImageFiles.OpenAsync(setup, new ImageOpenOptions(basePath, "qcow2"))).WriteAsync(0, baseData);
        }

        await using var graph = new BlockGraph();
        var top = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(topPath, "qcow2", NodeName: "top"));
        var target = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(targetPath, "qcow2", NodeName: "dst",
            Qcow2: new Qcow2Options { Backing = Qcow2BackingMode.None }));
        var vm = graph.AttachRoot(top, new RootParent("vm"));

        // Above the base, the top has clusters 0 and 3: the first copies take target clusters 0 and 3 whole,
        // and the job's cursor ends after cluster 3.
        await vm.WriteAsync(0, Enumerable.Repeat((byte)0x70, 4096).ToArray());
        await vm.WriteAsync(12288, Enumerable.Repeat((byte)0x73, 4096).ToArray());
        var manager = new JobManager();
        var job = await MirrorJob.StartAsync(manager, graph, top, target, new MirrorOptions
        {
            JobId = "j",
            Sync = MirrorSyncMode.Top,
            Granularity = 512,
            BufSize = 8192,
            BackingMode = MirrorBackingMode.SourceBackingChain,
        });
        await MirrorTestRunner.WaitReadyAsync(manager, job);

        // Dirty chunks 7 and 8: the cursor wraps to chunk 7, and the run starts in copied cluster 0 and ends
        // in cluster 1, never copied.
        await vm.WriteAsync(3584, Enumerable.Repeat((byte)0x71, 1024).ToArray());
        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);

        var expected = (byte[])baseData.Clone();
        expected.AsSpan(0, 3584).Fill(0x70);
        expected.AsSpan(3584, 1024).Fill(0x71);
        expected.AsSpan(12288, 4096).Fill(0x73);
        Assert.Same(target, vm.Node);
        MirrorRig.AssertSameBytes(expected, await MirrorRig.ReadAllAsync(target), "target after completion");
    }
}
