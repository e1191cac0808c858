using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// A small mirror set-up: source and target are blkdebug filters over memory disks, a "vm" root edge
/// uses the source, the source holds data with zero ranges between, and an event log records the job
/// manager's events.
/// </summary>
/// <remarks>
/// Layout of the default content (1 MiB): data in [0, 512 KiB) and [640 KiB, 704 KiB), zeroes elsewhere.
/// With 64 KiB chunks that is 9 chunks of data and 7 of zeroes.
/// </remarks>
sealed class MirrorRig : IAsyncDisposable
{
    public const long DefaultSize = 1 << 20;
    public const long Chunk = 64 * 1024;

    MirrorRig(BlockGraph graph, JobManager manager, BlockNode sourceMemory, BlockNode targetMemory, BlockNode source, BlockNode target,
        NodeEdge vm, byte[] content)
    {
        Graph = graph;
        Manager = manager;
        SourceMemory = sourceMemory;
        TargetMemory = targetMemory;
        Source = source;
        Target = target;
        Vm = vm;
        Content = content;
        Log = new EventLog(manager);
    }

    public BlockGraph Graph { get; }

    public JobManager Manager { get; }

    public EventLog Log { get; }

    public BlockNode SourceMemory { get; }

    public BlockNode TargetMemory { get; }

    /// <summary>The node the mirror copies from (blkdebug over <see cref="SourceMemory"/>).</summary>
    public BlockNode Source { get; }

    /// <summary>The node the mirror copies to (blkdebug over <see cref="TargetMemory"/>).</summary>
    public BlockNode Target { get; }

    public BlkdebugFilter SourceDebug => (BlkdebugFilter)Source.Driver;

    public BlkdebugFilter TargetDebug => (BlkdebugFilter)Target.Driver;

    /// <summary>The target's gate, when made with <c>gateTarget</c>.</summary>
    public GateFilter TargetGate => (GateFilter)Target.Driver;

    /// <summary>The source's user: writes through it reach the source through the mirror's filter.</summary>
    public NodeEdge Vm { get; }

    /// <summary>What the source held when the rig was made.</summary>
    public byte[] Content { get; }

    /// <param name="gateTarget">The target is an (open) <see cref="GateFilter"/> instead of blkdebug, so a test can hold its requests.</param>
    public static async Task<MirrorRig> CreateAsync(long size = DefaultSize, bool targetZeroInit = true, TimeProvider? time = null,
        bool withData = true, bool gateTarget = false)
    {
        var graph = new BlockGraph();
        var sourceMemory = await MemoryDriver.OpenAsync(graph, "src-mem", new MemoryDriverOptions(size));
        var targetMemory = await MemoryDriver.OpenAsync(graph, "dst-mem", new MemoryDriverOptions(size, targetZeroInit));
        var source = await BlkdebugFilter.OpenAsync(graph, "src", sourceMemory);
        var target = gateTarget
            ? await GateFilter.OpenAsync(graph, "dst", targetMemory, startOpen: true)
            : await BlkdebugFilter.OpenAsync(graph, "dst", targetMemory);
        var vm = graph.AttachRoot(source, new RootParent("vm"), "vm");

        var content = new byte[size];
        if (withData && size > 0)
        {
            // Only the data is written: the zero ranges stay unallocated, as on a sparse disk.
            var random = new Random(1234);
            var first = (int)Math.Min(size, 512 * 1024);
            random.NextBytes(content.AsSpan(0, first));
            await sourceMemory.WriteAsync(0, content.AsMemory(0, first));
            if (size >= 704 * 1024)
            {
                random.NextBytes(content.AsSpan(640 * 1024, 64 * 1024));
                await sourceMemory.WriteAsync(640 * 1024, content.AsMemory(640 * 1024, 64 * 1024));
            }
        }

        return new MirrorRig(graph, new JobManager(time), sourceMemory, targetMemory, source, target, vm, content);
    }

    public Task<MirrorJob> StartAsync(MirrorOptions options) =>
        MirrorJob.StartAsync(Manager, Graph, Source, Target, options);

    /// <summary>The usual options for these tests: 64 KiB chunks, two chunks of buffer, so one disk takes many operations.</summary>
    public static MirrorOptions Options(string id = "mirror0") => new() { JobId = id, Granularity = Chunk, BufSize = 2 * Chunk };

    public static async Task<byte[]> ReadAllAsync(BlockNode node)
    {
        var bytes = new byte[node.Length];
        await node.ReadAsync(0, bytes);
        return bytes;
    }

    /// <summary>Fails with the first differing offset unless the two memory disks hold the same bytes.</summary>
    public async Task AssertTargetEqualsSourceAsync()
    {
        var source = await ReadAllAsync(SourceMemory);
        var target = await ReadAllAsync(TargetMemory);
        AssertSameBytes(source, target, "target vs source");
    }

    public static void AssertSameBytes(byte[] expected, byte[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        var common = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(common == expected.Length, $"{what}: first difference at offset {common} of {expected.Length}");
    }

    /// <summary>The job left nothing behind: no filter in the graph, no dirty bitmap, no root edge of its own.</summary>
    public void AssertJobLeftNothing(BlockNode usersOn)
    {
        Assert.DoesNotContain(Graph.Nodes, n => n.Driver.DriverName == "mirror_top");
        Assert.Empty(Source.DirtyBitmaps);
        Assert.Same(usersOn, Vm.Node);
        Assert.Equal([Vm], Graph.Roots);
        Assert.Null(Manager.Find("mirror0"));
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Manager.CancelAllAsync().WaitAsync(MirrorTestRunner.Limit);
        }
        finally
        {
            Log.Dispose();
            await Graph.DisposeAsync();
        }
    }
}
