using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Commit;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Jobs.Tests.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Policies;

/// <summary>The three jobs that copy under an error policy.</summary>
public enum PolicyJob
{
    /// <summary>sync=full mirror of the top to a raw target.</summary>
    Mirror,

    /// <summary>Commit of the active layer into the base (a mirror job that ends on request).</summary>
    ActiveCommit,

    /// <summary>Commit of the middle layer into the base (the commit job, which ends by itself).</summary>
    IntermediateCommit,
}

/// <summary>Where the injected error strikes.</summary>
public enum FaultSide
{
    SourceRead,
    TargetWrite,

    /// <summary>The query of what lies above the base (intermediate commit only; it counts as a read).</summary>
    SourceBlockStatus,
}

/// <summary>
/// base ← mid ← top, qcow2 files in memory, each file under a blkdebug node as a user would set it up
/// with QEMU (qcow2 → blkdebug → file), plus a raw target for the mirror, also under blkdebug.
/// </summary>
/// <remarks>
/// <para>Layout (1 MiB, 64 KiB clusters): the base holds old data in [0, 512 KiB); mid holds new data in
/// [128, 384) KiB; top holds new data in [384, 640) KiB. The fault chunk, [256, 320) KiB, is data in mid
/// only: every job reads it from mid's file, and both commits write it over old data in the base, so a
/// job that skipped it leaves the old bytes (or, on the mirror target, zeroes) where the data belongs.</para>
/// <para>Rules go on the files, so they are placed by host offset: where mid keeps the chunk (reads), and
/// where the base keeps it (the base's cluster is allocated, so a commit overwrites it in place).</para>
/// </remarks>
sealed class PolicyChain : IAsyncDisposable
{
    public const long Size = 1 << 20;
    public const long Chunk = 64 * 1024;
    public const long FaultOffset = 4 * Chunk;
    public const string JobId = "job0";

    readonly TempDirectory _dir;
    BlockNode? _statusFilter;

    PolicyChain(TempDirectory dir, BlockGraph graph, BlockNode @base, BlockNode mid, BlockNode top, BlockNode target, TimeProvider? time)
    {
        _dir = dir;
        Graph = graph;
        Base = @base;
        Mid = mid;
        Top = top;
        Target = target;
        Manager = new JobManager(time);
        Log = new EventLog(Manager);
    }

    public BlockGraph Graph { get; }

    public JobManager Manager { get; }

    public EventLog Log { get; }

    public BlockNode Base { get; }

    public BlockNode Mid { get; }

    public BlockNode Top { get; }

    /// <summary>The mirror's target: blkdebug over a raw file.</summary>
    public BlockNode Target { get; }

    /// <param name="time">The jobs' clock; the system's when null.</param>
    public static async Task<PolicyChain> CreateAsync(TimeProvider? time = null)
    {
        var dir = TempDirectory.InMemory("blockmirror-policy-");
        var (basePath, midPath, topPath, targetPath) = (dir.File("base.qcow2"), dir.File("mid.qcow2"), dir.File("top.qcow2"), dir.File("target.raw"));
        var options = new Qcow2CreateOptions { Size = Size, ClusterSize = (int)Chunk };
        Qcow2Create.Create(basePath, options);
        Qcow2Create.Create(midPath, options with { BackingFile = basePath, BackingFormat = "qcow2" });
        Qcow2Create.Create(topPath, options with { BackingFile = midPath, BackingFormat = "qcow2" });
        await using (var fill = new FileStream(targetPath, FileMode.CreateNew))
        {
            fill.SetLength(Size);
        }

        await FillAsync(basePath, 0, 8 * Chunk, seed: 1);
        await FillAsync(midPath, 2 * Chunk, 4 * Chunk, seed: 2);
        await FillAsync(topPath, 6 * Chunk, 4 * Chunk, seed: 3);

        var graph = new BlockGraph();
        var @base = await OpenLayerAsync(graph, basePath, "base", readOnly: true, backing: null);
        var mid = await OpenLayerAsync(graph, midPath, "mid", readOnly: true, backing: @base);
        var top = await OpenLayerAsync(graph, topPath, "top", readOnly: false, backing: mid);
        graph.AttachRoot(top, new RootParent("vm"), "vm");
        var targetFile = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(targetPath));
        var target = await BlkdebugFilter.OpenAsync(graph, "target", targetFile);
        return new PolicyChain(dir, graph, @base, mid, top, target, time);
    }

    /// <summary>file → blkdebug ("name-debug") → qcow2 ("name"); lower layers read-only as backing files are.</summary>
    static async Task<BlockNode> OpenLayerAsync(BlockGraph graph, string path, string name, bool readOnly, BlockNode? backing)
    {
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path), readOnly);
        var debug = await BlkdebugFilter.OpenAsync(graph, $"{name}-debug", file, readOnly: readOnly);
        var options = backing is null ? new Qcow2Options() : new Qcow2Options { Backing = Qcow2BackingMode.Node, BackingNode = backing };
        var node = await Qcow2Driver.OpenAsync(graph, name, debug, options, readOnly);
        node.AutoReadOnly = readOnly;
        return node;
    }

    static async Task FillAsync(string path, long offset, long length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
        await node.WriteAsync(offset, data);
    }

    /// <summary>The blkdebug node under a qcow2 layer's file child.</summary>
    static BlkdebugFilter DebugOf(BlockNode layer) => (BlkdebugFilter)layer.File!.Node.Driver;

    /// <summary>
    /// Adds the rule that fails the fault chunk on <paramref name="side"/> of <paramref name="job"/>; returns
    /// the blkdebug node that holds it, and the rule.
    /// </summary>
    public async Task<(BlkdebugFilter Debug, BlkdebugRule Rule)> InjectAsync(PolicyJob job, FaultSide side, BlockErrno errno, bool once)
    {
        var (debug, operation, offset) = side switch
        {
            FaultSide.SourceRead => (DebugOf(Mid), BlockOperation.Read, await HostOffsetAsync(Mid, FaultOffset)),
            FaultSide.TargetWrite when job == PolicyJob.Mirror => ((BlkdebugFilter)Target.Driver, BlockOperation.Write, FaultOffset),
            FaultSide.TargetWrite => (DebugOf(Base), BlockOperation.Write, await HostOffsetAsync(Base, FaultOffset)),
            FaultSide.SourceBlockStatus => (await InsertStatusFilterAsync(), BlockOperation.BlockStatus, FaultOffset),
            _ => throw new ArgumentOutOfRangeException(nameof(side)),
        };
        return (debug, debug.AddRule(new BlkdebugRule(operation, offset, Chunk, errno, Once: once)));
    }

    /// <summary>
    /// qcow2 answers block status from its own tables, never asking its file: a block-status error comes
    /// from a blkdebug filter put between top and mid, which the commit then takes as its top.
    /// </summary>
    async Task<BlkdebugFilter> InsertStatusFilterAsync()
    {
        _statusFilter = await BlkdebugFilter.OpenAsync(Graph, "mid-status", Mid, readOnly: true);
        using (await Graph.DrainAsync(Mid))
        {
            Graph.ReplaceNode(Mid, _statusFilter);
        }

        return (BlkdebugFilter)_statusFilter.Driver;
    }

    static async Task<long> HostOffsetAsync(BlockNode layer, long offset)
    {
        var status = await layer.GetBlockStatusAsync(offset, Chunk);
        Assert.True(status.IsData && status.HostOffset >= 0, $"{layer.Name} does not hold data at {offset}");
        return status.HostOffset;
    }

    /// <summary>What the job's destination must hold once it succeeds: the view through its source.</summary>
    public Task<byte[]> ReadExpectedAsync(PolicyJob job) => MirrorRig.ReadAllAsync(job == PolicyJob.IntermediateCommit ? Mid : Top);

    /// <summary>What the job wrote into: the base for the commits (alone, no backing below it), the raw target for the mirror.</summary>
    public Task<byte[]> ReadDestinationAsync(PolicyJob job) => MirrorRig.ReadAllAsync(job == PolicyJob.Mirror ? Target : Base);

    public async Task<BlockJob> StartAsync(PolicyJob job, BlockdevOnError policy, CancellationToken cancellationToken = default)
    {
        var mirror = new MirrorOptions { JobId = JobId, Granularity = Chunk, BufSize = 2 * Chunk, OnSourceError = policy, OnTargetError = policy };
        return job switch
        {
            PolicyJob.Mirror => await MirrorJob.StartAsync(Manager, Graph, Top, Target, mirror, cancellationToken),
            PolicyJob.ActiveCommit => await MirrorJob.StartActiveCommitAsync(Manager, Graph, Top, Base, mirror, cancellationToken),
            PolicyJob.IntermediateCommit => await CommitJob.StartAsync(Manager, Graph, _statusFilter ?? Mid, Base, new CommitOptions { JobId = JobId, OnError = policy }, cancellationToken),
            _ => throw new ArgumentOutOfRangeException(nameof(job)),
        };
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
            _dir.Dispose();
        }
    }
}
