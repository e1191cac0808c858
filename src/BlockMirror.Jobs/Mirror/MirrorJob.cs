using System.Runtime.CompilerServices;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The mirror job: copies a source node to a target while writers keep writing to the source, reports
/// READY once the two are in sync, and on completion moves every parent of the source to the target
/// without losing a write (QEMU's block/mirror.c, background copy mode).
/// </summary>
/// <remarks>
/// <para><b>Why no write is lost.</b> Every write to the source marks its chunks in the job's dirty
/// bitmap when it completes. The copy loop clears a chunk's bit <i>before</i> it asks for block status
/// and reads it. A write that completed before the clear is seen by the read; one that completes after
/// it marks the chunk again, and the chunk is copied again. An in-flight bitmap keeps two copies of one
/// chunk from overlapping, so the last copy to land on the target is the newest. At completion the
/// source is drained (its parents' new requests are held), the bitmap is checked once more, the target
/// is flushed, and the parents are moved to the target before they are let go.</para>
/// <para><b>Progress.</b> <c>offset</c> counts bytes copied or zeroed on the target (the zeroing of a
/// target before the copy is not counted); <c>len</c> is offset plus what is dirty now plus what is in
/// flight, so it grows while writers dirty the source and may count a chunk once per copy.</para>
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001",
    Justification = "The buffer pool is freed when the copy loop ends; the cancellation source has no timer and needs no disposing.")]
public sealed partial class MirrorJob : BlockJob
{
    /// <summary>Operations in flight at once (QEMU's MAX_IN_FLIGHT).</summary>
    public const int MaxInFlight = 16;

    /// <summary>Largest data copy in one operation (QEMU's MAX_IO_BYTES).</summary>
    public const long MaxIoBytes = 1 << 20;

    /// <summary>The loop yields at least this often so drains and pauses get their turn (QEMU's SLICE_TIME).</summary>
    static readonly TimeSpan SliceTime = TimeSpan.FromMilliseconds(100);

    readonly BlockGraph _graph;
    readonly BlockNode _source;
    readonly BlockNode _mirrorTop;
    readonly NodeEdge _read;
    readonly NodeEdge _target;

    // The job's own use of the source, through the filter: reads, and no resize by anyone (QEMU's job
    // BlockBackend on mirror_top). Lets go before the pivot, so the graph can change under it.
    NodeEdge? _sourceUse;
    readonly BlockNode? _base;
    readonly MirrorOptions _options;
    readonly IReadOnlyList<BlockNode> _usedNodes;

    // Active commit: the target is the base of the source's own chain, reopened read-write for the job
    // (and read-only again if the job does not complete).
    readonly bool _reopenedTarget;
    readonly long _granularity;
    readonly long _bufSize;
    readonly long _maxIo;
    readonly DirtyBitmap _dirty;
    readonly CancellationTokenSource _forceCancel = new();

    // Shared between the copy loop and completing operations; guarded by _opLock.
    readonly Lock _opLock = new();
    readonly Stack<MirrorOp> _opPool = new();
    HBitmap? _inFlightChunks;
    MirrorBufferPool? _buffers;
    int _inFlight;
    long _bytesInFlight;
    Exception? _ioFailure;
    TaskCompletionSource? _ioWaiter;

    // Clusters of a target that names a backing file it has not opened yet, copied whole at their first
    // copy so that none of them keeps bytes it would otherwise read from that backing (QEMU's cow_bitmap).
    // One bit per chunk, set once a copy covering it has succeeded; null when not needed. Under _opLock.
    HBitmap? _cowChunks;

    // Copy loop only.
    long _length;
    long _cursor;
    DateTimeOffset _lastPause;
    DateTimeOffset _lastReadyFlush;
    long _targetCluster;

    // QEMU's write_zeroes_ok (bdrv_can_write_zeroes_with_unmap): the target was opened with discard=unmap
    // and unmaps on write-zeroes. Only then are zero and discard ranges free of the speed limit; on any
    // other target (qemu-storage-daemon's default, discard=ignore) they count as if copied.
    bool _zeroesUnmetered;

    // The source's and the target's lengths must not change while the job copies one onto the other.
    IDisposable? _sourceResizeBlock;
    IDisposable? _targetResizeBlock;

    BlockNode? _replaces;
    volatile bool _shouldComplete;
    DrainedSection? _drain;
    long _drainStarted;
    long _pivotPauseTicks = -1;
    bool _exited;

    MirrorJob(JobManager manager, BlockGraph graph, BlockNode source, BlockNode mirrorTop, NodeEdge target, BlockNode? @base,
        MirrorOptions options, long granularity, long bufSize, DirtyBitmap dirty, JobType type, IReadOnlyList<BlockNode> usedNodes, bool reopenedTarget)
        : base(manager, options.JobId, type, options.AutoFinalize, options.AutoDismiss, options.Speed)
    {
        _usedNodes = usedNodes;
        _reopenedTarget = reopenedTarget;
        _graph = graph;
        _source = source;
        _mirrorTop = mirrorTop;
        _read = ((MirrorTopFilter)mirrorTop.Driver).Source;
        _target = target;
        _base = @base;
        _options = options;
        _granularity = granularity;
        _bufSize = bufSize;
        _maxIo = Math.Min(bufSize, MaxIoBytes);
        _dirty = dirty;
    }

    public BlockNode Source => _source;

    public BlockNode Target => _target.Node;

    /// <summary>The mirror-top filter node inserted above the source.</summary>
    public BlockNode FilterNode => _mirrorTop;

    public long Granularity => _granularity;

    public long BufSize => _bufSize;

    /// <summary>
    /// How long the final drained section held the source's users: from the start of the drain that
    /// succeeded to the end of the graph change (null until the job has ended that way).
    /// </summary>
    public TimeSpan? PivotPause
    {
        get
        {
            var ticks = Interlocked.Read(ref _pivotPauseTicks);
            return ticks < 0 ? null : TimeSpan.FromTicks(ticks);
        }
    }

    /// <summary>Bytes dirty now (what is left to copy, in flight excluded).</summary>
    public long DirtyBytes => _dirty.DirtyBytes;

    /// <summary>
    /// Validates the options, inserts the mirror-top filter above <paramref name="source"/>, starts tracking
    /// writes, and starts the job. Any refusal leaves the graph as it was. A target of another size is not
    /// refused here: as QEMU's mirror_run, the job starts and then fails with "Source and target image have
    /// different sizes" before it writes anything (<see cref="CheckSameSize"/> refuses it beforehand).
    /// </summary>
    public static Task<MirrorJob> StartAsync(JobManager manager, BlockGraph graph, BlockNode source, BlockNode target,
        MirrorOptions options, CancellationToken cancellationToken = default)
    {
        if (ReferenceEquals(source, target))
        {
            throw new JobException("Can't mirror node into itself");
        }

        if (options.Sync == MirrorSyncMode.Top && source.Backing is null)
        {
            // Without a backing node "top" is "full": everything is above the (absent) base.
            options = options with { Sync = MirrorSyncMode.Full };
        }

        var @base = options.Sync == MirrorSyncMode.Top ? source.Backing : null;
        return StartCoreAsync(manager, graph, source, target, options, JobType.Mirror, @base, [source, target], reopenedTarget: false, cancellationToken);
    }

    /// <summary>
    /// Refuses a target whose size differs from the source's, naming both: for a command that would rather
    /// refuse than start a job bound to fail (<c>blockmirror mirror</c>).
    /// </summary>
    public static void CheckSameSize(BlockNode source, BlockNode target)
    {
        if (source.Length != target.Length)
        {
            throw new JobException($"Source and target image have different sizes (source '{source.Name}' {source.Length} bytes, target '{target.Name}' {target.Length} bytes)");
        }
    }

    /// <summary>
    /// Active commit (QEMU's commit_active_start): <paramref name="top"/> is the active layer, and what the
    /// layers above <paramref name="base"/> hold is mirrored down into it; completion puts the base in the
    /// top's place, so the layers in between drop out of the chain. The base is reopened read-write if it
    /// was read-only only for being a backing file, and grown to the top's size if it is smaller.
    /// </summary>
    public static async Task<MirrorJob> StartActiveCommitAsync(JobManager manager, BlockGraph graph, BlockNode top, BlockNode @base,
        MirrorOptions options, CancellationToken cancellationToken = default)
    {
        var chain = Commit.CommitJob.CheckChain(top, @base);

        // Every option is checked before the base is reopened or grown: a refused request changes nothing.
        CheckOptions(manager, top, options);
        manager.CheckNodesFree(options.JobId, [.. chain]);
        var reopened = await Commit.CommitJob.MakeWritableAsync(graph, @base, cancellationToken).ConfigureAwait(false);
        try
        {
            if (@base.Length < top.Length)
            {
                await @base.TruncateAsync(top.Length, cancellationToken).ConfigureAwait(false);
            }

            return await StartCoreAsync(manager, graph, top, @base, options with { Sync = MirrorSyncMode.Top, BackingMode = MirrorBackingMode.LeaveBackingChain },
                JobType.Commit, @base, chain, reopened, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            if (reopened)
            {
                await graph.ReopenAsync(@base, readOnly: true, CancellationToken.None).ConfigureAwait(false);
            }

            throw;
        }
    }

    /// <summary>
    /// The checks that need no target node: the options' own values, the job ID, the filter's name, and that
    /// no other job uses the source. A command that makes the target itself (drive-mirror, <c>blockmirror
    /// mirror</c>) runs them before it creates any file, so that a refused request leaves the disk as it was;
    /// the start runs them again (under its gate, where another start could have taken the ID or the node).
    /// </summary>
    public static void CheckOptions(JobManager manager, BlockNode source, MirrorOptions options)
    {
        if (options.Granularity != 0 && DirtyBitmap.ValidateGranularity(options.Granularity) is not null)
        {
            throw new JobException(options.Granularity < DirtyBitmap.MinGranularity || options.Granularity > DirtyBitmap.MaxGranularity
                ? "Parameter 'granularity' expects a value in range [512B, 64MB]"
                : "Parameter 'granularity' expects a power of 2");
        }

        if (options.BufSize < 0)
        {
            throw new JobException("Parameter 'buf-size' expects a positive value");
        }

        if (options.Speed < 0)
        {
            throw new JobException("Invalid parameter 'speed'");
        }

        manager.ValidateNewId(options.JobId);
        if (options.FilterNodeName is { } filterName && BlockGraph.ValidateNodeName(filterName) is { } problem)
        {
            throw new JobException(problem);
        }

        manager.CheckNodesFree(options.JobId, source);
    }

    /// <summary>What a mirror and an active commit share: option checks, the start gate, the graph change.</summary>
    static async Task<MirrorJob> StartCoreAsync(JobManager manager, BlockGraph graph, BlockNode source, BlockNode target,
        MirrorOptions options, JobType type, BlockNode? @base, IReadOnlyList<BlockNode> usedNodes, bool reopenedTarget, CancellationToken cancellationToken)
    {
        CheckOptions(manager, source, options);
        if (target.ReadOnly)
        {
            // QEMU's words (its permission check on the target): iotest 041 TestOrphanedSource.
            throw new JobException("Block node is read-only");
        }

        var replaces = options.Replaces is { } replacesName ? CheckReplaces(graph, source, replacesName) : null;
        var granularity = options.Granularity != 0 ? options.Granularity : DefaultGranularity(target);
        // QEMU's mirror_start_job rounds any buf-size up to a whole number of chunks, one chunk at least (a
        // buf-size of 4 KiB with 64 KiB chunks copies one chunk at a time); the default (16 MiB) likewise
        // when the granularity is larger.
        var bufSize = options.BufSize != 0 ? options.BufSize : MirrorOptions.DefaultBufSize;
        bufSize = (bufSize + granularity - 1) / granularity * granularity;
        if (NeedsCowAlignment(target, granularity))
        {
            // One operation must hold a whole target cluster (see NeedsCowAlignment).
            bufSize = Math.Max(bufSize, target.Limits.ClusterSize);
        }

        if (bufSize > int.MaxValue)
        {
            throw new JobException($"Parameter 'buf-size' expects a value of at most {int.MaxValue} bytes");
        }

        // The checks that another start can invalidate, the graph change and the registration form one
        // step against other starts: a start waits in a drained section between them, and two starts
        // that had both passed the checks (same id, or same node) would both change the graph.
        await manager.StartGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return await StartGatedAsync(manager, graph, source, target, options, granularity, bufSize, type, @base, usedNodes, reopenedTarget, replaces, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            manager.StartGate.Release();
        }
    }

    /// <summary>The part of <see cref="StartCoreAsync"/> that runs under the job manager's start gate.</summary>
    static async Task<MirrorJob> StartGatedAsync(JobManager manager, BlockGraph graph, BlockNode source, BlockNode target,
        MirrorOptions options, long granularity, long bufSize, JobType type, BlockNode? @base, IReadOnlyList<BlockNode> usedNodes,
        bool reopenedTarget, BlockNode? replaces, CancellationToken cancellationToken)
    {
        manager.ValidateNewId(options.JobId);
        manager.CheckNodesFree(options.JobId, [.. usedNodes]);

        // Insert the filter while the source is drained, so no request slips between the old and the
        // new parents; start tracking writes before the section ends, so none is missed.
        BlockNode mirrorTop;
        DirtyBitmap dirty;
        NodeEdge targetEdge;
        NodeEdge sourceUse;
        IDisposable sourceResize;
        IDisposable targetResize;
        var parent = new RootParent($"block job '{options.JobId}'");
        var (targetTakes, targetShares) = TargetPermissions(source, target);
        using (await graph.DrainAsync(source, cancellationToken).ConfigureAwait(false))
        {
            // Refused (QEMU's permission conflict) while another user of the target writes or reads it.
            targetEdge = graph.AttachRoot(target, parent, "target", targetTakes, targetShares);
            try
            {
                mirrorTop = await graph.CreateNodeAsync(options.FilterNodeName, false, (node, _) =>
                        ValueTask.FromResult<Block.Drivers.IBlockDriver>(new MirrorTopFilter(node.AttachChild(ChildNames.Filtered, source))),
                    cancellationToken).ConfigureAwait(false);
                sourceUse = graph.AttachRoot(mirrorTop, parent, "source", BlockPermissions.ConsistentRead,
                    BlockPermissions.ConsistentRead | BlockPermissions.Write | BlockPermissions.WriteUnchanged);
                try
                {
                    graph.ReplaceNode(source, mirrorTop);
                }
                catch (BlockGraphException)
                {
                    // A user of the source that resizes it: the filter goes (with its last parent, if unnamed).
                    await graph.DetachRootAsync(sourceUse).ConfigureAwait(false);
                    await graph.RemoveNodeAsync(mirrorTop).ConfigureAwait(false);
                    throw;
                }
            }
            catch
            {
                await graph.DetachRootAsync(targetEdge).ConfigureAwait(false);
                throw;
            }

            // Nothing below can fail: take the blocks now, so a failed filter creation leaves none behind.
            sourceResize = source.BlockResize(parent.ParentDescription);
            targetResize = target.BlockResize(parent.ParentDescription);
            dirty = source.CreateDirtyBitmap(granularity);
        }

        var job = new MirrorJob(manager, graph, source, mirrorTop, targetEdge, @base, options, granularity, bufSize, dirty, type, usedNodes, reopenedTarget)
        {
            _sourceResizeBlock = sourceResize,
            _targetResizeBlock = targetResize,
            _replaces = replaces,
            _sourceUse = sourceUse,
        };
        manager.Register(job);
        job.Start();
        return job;
    }

    /// <summary>
    /// What the job takes on its target and lets others do there (QEMU's mirror.c): it writes, and while the
    /// copy is incomplete nobody else may read it consistently or write it. An active commit's target is the
    /// source's own backing file, which the source reads through and which may have to grow to its length:
    /// there reads and writes stay shared, and the job may resize it.
    /// </summary>
    static (BlockPermissions Takes, BlockPermissions Shares) TargetPermissions(BlockNode source, BlockNode target)
    {
        for (var node = source.ChainChild; node is not null; node = node.ChainChild)
        {
            if (ReferenceEquals(node, target))
            {
                return (BlockPermissions.Write | BlockPermissions.Resize,
                    BlockPermissions.ConsistentRead | BlockPermissions.Write | BlockPermissions.WriteUnchanged);
            }
        }

        return (BlockPermissions.Write, BlockPermissions.WriteUnchanged);
    }

    /// <summary>The target's cluster size clamped to 4 KiB..64 KiB, or 64 KiB when it has none (QEMU's default).</summary>
    public static long DefaultGranularity(BlockNode target)
    {
        var cluster = target.Limits.ClusterSize;
        return cluster == 0 ? 64 * 1024 : Math.Clamp(cluster, 4096, 64 * 1024);
    }

    /// <summary>
    /// The node a <c>replaces</c> names, checked as QEMU's blockdev_mirror_common and check_to_replace_node
    /// do: it exists, the source reaches it through filters only (the source itself or a node under a filter
    /// such as blkdebug: putting the target in its place then changes no data the source's users see), and it
    /// has the source's size.
    /// </summary>
    static BlockNode CheckReplaces(BlockGraph graph, BlockNode source, string name)
    {
        var node = graph.FindNode(name) ?? throw new JobException($"Failed to find node with node-name='{name}'");
        for (var n = source; n is not null; n = n.FilteredChild?.Node)
        {
            if (ReferenceEquals(n, node))
            {
                if (node.Length != source.Length)
                {
                    throw new JobException("cannot replace image with a mirror image of different size");
                }

                return node;
            }
        }

        throw new JobException($"Cannot replace '{name}' by a node mirrored from '{source.Name}', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data");
    }

    internal override IEnumerable<BlockNode> UsedNodes => _usedNodes;

    protected override bool SupportsComplete => true;

    protected override void OnComplete()
    {
        if (!IsReady)
        {
            throw new JobException($"The active block job '{Id}' cannot be completed");
        }

        _shouldComplete = true;
        Enter();
    }

    /// <summary>Before READY every cancel is forced: there is no consistent copy to keep.</summary>
    protected override bool OnCancel(bool force) => force || !IsReady;

    protected override void OnForceCancelled() => _forceCancel.Cancel();

    protected override async ValueTask OnPauseAsync() => await WaitForAllIoAsync().ConfigureAwait(false);

    // ----- The copy loop -----

    protected override async Task RunAsync()
    {
        if (IsCancelled)
        {
            return;
        }

        _length = _source.Length;
        // QEMU's mirror_run checks this first, before a zero-length source becomes READY: the job fails
        // (BLOCK_JOB_COMPLETED carries the error) before it writes anything. An active commit (the target is
        // the base) grew its base beforehand.
        if (!ReferenceEquals(_base, _target.Node) && _length != _target.Node.Length)
        {
            throw new JobException("Source and target image have different sizes");
        }

        if (_length == 0)
        {
            // Nothing to copy: ready at once, then wait to be completed or cancelled.
            TransitionToReady();
            while (!IsCancelRequested && !_shouldComplete)
            {
                // A timed sleep, not a yield: a complete that lands between the check and the park
                // would find the body busy and not wake it, and a yield would then wait forever.
                await SleepAsync(SliceTime).ConfigureAwait(false);
            }

            if (!IsCancelled)
            {
                _drain = await _graph.DrainAsync(_source).ConfigureAwait(false);
            }

            return;
        }

        _targetCluster = Math.Max(_target.Node.Limits.ClusterSize, 1);
        var targetCaps = _target.Node.Capabilities;
        _zeroesUnmetered = targetCaps.CanDiscard && targetCaps.CanUnmapOnZero;
        lock (_opLock)
        {
            _inFlightChunks = new HBitmap((_length + _granularity - 1) / _granularity);
            _buffers = new MirrorBufferPool(_bufSize, _granularity);
            if (NeedsCowAlignment(_target.Node, _granularity))
            {
                _cowChunks = new HBitmap((_length + _granularity - 1) / _granularity);
            }
        }

        try
        {
            _lastPause = Time.GetUtcNow();
            if (_options.Sync != MirrorSyncMode.None)
            {
                await DirtyInitAsync().ConfigureAwait(false);
                if (IsCancelled)
                {
                    return;
                }
            }

            StartMeasuring();
            await CopyLoopAsync().ConfigureAwait(false);
        }
        finally
        {
            // Only a failure or a forced cancel leaves operations in flight here.
            await WaitForAllIoAsync().ConfigureAwait(false);
            lock (_opLock)
            {
                _buffers?.Dispose();
                _buffers = null;
            }
        }
    }

    async Task CopyLoopAsync()
    {
        while (true)
        {
            ThrowIfIoFailed();
            await PausePointAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            var dirty = _dirty.DirtyBytes;
            int inFlight;
            int freeChunks;
            lock (_opLock)
            {
                ProgressSetRemaining(_bytesInFlight + dirty);
                inFlight = _inFlight;
                freeChunks = _buffers!.FreeChunks;
            }

            var delay = TimeSpan.Zero;

            // Yield with no I/O pending at least once per slice, so drains and pauses are not starved.
            if (Time.GetUtcNow() - _lastPause < SliceTime && IoStatus == IoStatus.Ok)
            {
                if (inFlight >= MaxInFlight || freeChunks == 0 || (dirty == 0 && inFlight > 0))
                {
                    await WaitForIoAsync().ConfigureAwait(false);
                    continue;
                }

                if (dirty != 0)
                {
                    delay = await IterateAsync().ConfigureAwait(false);
                }
            }

            var shouldComplete = false;
            if (InFlight == 0 && dirty == 0)
            {
                if (!IsReady)
                {
                    // In sync: make what was copied durable, then announce READY once. From now on a
                    // soft cancel finishes the final sync and leaves a consistent copy.
                    if (!await FlushTargetAsync().ConfigureAwait(false))
                    {
                        continue;
                    }

                    TransitionToReady();
                    _lastReadyFlush = Time.GetUtcNow();
                }
                else if (!_shouldComplete && !IsCancelRequested && Time.GetUtcNow() - _lastReadyFlush >= SliceTime)
                {
                    // In READY, make the copies durable as they land, once a slice (a flush with nothing
                    // new is skipped by the node): the flush at the switch, made while the writers are
                    // held, then has at most a slice of copies to write back. QEMU flushes only then, and
                    // under a writer its switch holds the guest 50 to 400 ms.
                    _lastReadyFlush = Time.GetUtcNow();
                    if (!await FlushTargetAsync().ConfigureAwait(false))
                    {
                        continue;
                    }
                }

                shouldComplete = _shouldComplete || IsCancelRequested;
                dirty = _dirty.DirtyBytes;
            }

            if (dirty == 0 && shouldComplete)
            {
                // Writers may have dirtied the source since the last look: hold them, look once more,
                // and flush. Only then is the target a complete copy. The section stays open until the
                // graph change in PrepareAsync (or AbortAsync) ends it.
                var drainStarted = Time.GetTimestamp();
                var drain = await _graph.DrainAsync(_source).ConfigureAwait(false);
                if (_dirty.DirtyBytes > 0 || !await FlushTargetAsync().ConfigureAwait(false))
                {
                    drain.Dispose();
                    continue;
                }

                _drain = drain;
                _drainStarted = drainStarted;
                return;
            }

            if (!IsReady)
            {
                await SleepAsync(delay).ConfigureAwait(false);
                if (IsCancelled)
                {
                    return;
                }
            }
            else if (!shouldComplete)
            {
                // The speed limit holds after READY too (QEMU's mirror_run drops the delay once synced, so
                // its limit stops at READY): a user who limits the copy means while the job runs at all.
                await SleepAsync(InFlight == 0 && dirty == 0 ? SliceTime : delay).ConfigureAwait(false);
            }

            _lastPause = Time.GetUtcNow();
        }
    }

    int InFlight
    {
        get
        {
            lock (_opLock)
            {
                return _inFlight;
            }
        }
    }

    bool ChunkInFlight(long offset)
    {
        lock (_opLock)
        {
            return _inFlightChunks!.Get(offset / _granularity);
        }
    }

    bool RangeInFlight(long offset, long end)
    {
        lock (_opLock)
        {
            for (var chunk = offset / _granularity; chunk * _granularity < end; chunk++)
            {
                if (_inFlightChunks!.Get(chunk))
                {
                    return true;
                }
            }

            return false;
        }
    }

    /// <summary>Null when the target needs no COW alignment; else whether the chunk has been copied once.</summary>
    bool? CowCopied(long offset)
    {
        lock (_opLock)
        {
            return _cowChunks?.Get(offset / _granularity);
        }
    }

    /// <summary>
    /// QEMU's condition for its cow_bitmap: the target names a backing file that is not open (it will be
    /// at completion), and a chunk is smaller than a target cluster, so a partial copy would leave the
    /// rest of a newly allocated cluster to be read, wrongly, from that backing later.
    /// </summary>
    static bool NeedsCowAlignment(BlockNode target, long granularity) =>
        target.Driver.BackingFileName is not null && target.Backing is null && granularity < target.Limits.ClusterSize;

    /// <summary>
    /// One pass: from the next dirty chunk, take the run of dirty chunks after it (up to buf-size), clear
    /// their bits, and issue operations over it by block status. Returns how long the rate limit wants the
    /// loop to wait.
    /// </summary>
    async Task<TimeSpan> IterateAsync()
    {
        var offset = _dirty.NextDirty(_cursor);
        if (offset < 0)
        {
            _cursor = 0;
            offset = _dirty.NextDirty(0);
            if (offset < 0)
            {
                return TimeSpan.Zero;
            }
        }

        offset -= offset % _granularity;
        while (ChunkInFlight(offset))
        {
            await WaitForIoAsync().ConfigureAwait(false);
        }

        await PausePointAsync().ConfigureAwait(false);
        if (IsCancelled)
        {
            return TimeSpan.Zero;
        }

        // Extend over the dirty chunks that follow, stopping at one in flight (it must finish first).
        long chunks = 1;
        while ((chunks + 1) * _granularity <= _bufSize)
        {
            var next = offset + chunks * _granularity;
            if (next >= _length || !_dirty.IsDirty(next) || ChunkInFlight(next))
            {
                break;
            }

            chunks++;
        }

        var end = Math.Min(offset + chunks * _granularity, _length);
        if (CowCopied(offset) == false || CowCopied(end - 1) == false)
        {
            // First copy into this part of a target whose backing is not open: take whole target
            // clusters, clean chunks around the dirty ones included, so the target never allocates a
            // cluster holding only part of its data (the rest would be read from the backing later).
            // Both ends are looked at, as QEMU's mirror_cow_align does: a run may start in a cluster
            // copied before and end in one never copied (clusters in between it covers whole).
            (offset, end) = (offset - offset % _targetCluster, Math.Min((end + _targetCluster - 1) / _targetCluster * _targetCluster, _length));
            chunks = (end - offset + _granularity - 1) / _granularity;
            while (RangeInFlight(offset, end))
            {
                await WaitForIoAsync().ConfigureAwait(false);
            }
        }

        // Clear the dirty bits before asking for block status and reading: a write that completes after
        // this point marks the chunks again and they are copied again. Mark them in flight under the
        // same reasoning: no other operation may touch them until this one is done.
        _dirty.ResetDirty(offset, end - offset);
        lock (_opLock)
        {
            _inFlightChunks!.Set(offset / _granularity, chunks);
        }

        var delay = TimeSpan.Zero;
        while (offset < end)
        {
            var (method, io) = await ChooseMethodAsync(offset, end).ConfigureAwait(false);
            while (InFlight >= MaxInFlight)
            {
                await WaitForIoAsync().ConfigureAwait(false);
            }

            if (IoFailed)
            {
                // Give the chunks not yet issued back to the bitmap: they were cleared above.
                ReleaseUnissued(offset, end);
                return TimeSpan.Zero;
            }

            if (method == MirrorMethod.Copy)
            {
                await StartCopyAsync(offset, io).ConfigureAwait(false);
            }
            else
            {
                StartZeroOrDiscard(offset, io, method, initialZeroing: false);
            }

            var accounted = method == MirrorMethod.Copy || !_zeroesUnmetered ? io : 0;
            if (Speed != 0)
            {
                delay = Limiter.CalculateDelay(accounted);
            }

            offset += io;
        }

        _cursor = end;
        return delay;
    }

    void ReleaseUnissued(long offset, long end)
    {
        _dirty.SetDirty(offset, end - offset);
        lock (_opLock)
        {
            var first = offset / _granularity;
            _inFlightChunks!.Reset(first, (end + _granularity - 1) / _granularity - first);
        }
    }

    /// <summary>Decides how to move [offset, ...) and how much of it in one operation.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<(MirrorMethod Method, long Length)> ChooseMethodAsync(long offset, long end)
    {
        BlockStatus status;
        try
        {
            // The whole chain, as QEMU's mirror_iteration asks: what the source reads is what is copied.
            // (Only the initial dirty bitmap of sync=top looks above the base.)
            status = await BlockChain.GetBlockStatusAboveAsync(_read.Node, null, offset, end - offset).ConfigureAwait(false);
        }
        catch (BlockIOException)
        {
            // Cannot tell: copy, which is always right (the read will report a real error).
            return (MirrorMethod.Copy, ChunkAligned(offset, Math.Min(end - offset, _maxIo)));
        }

        if (status.IsData)
        {
            return (MirrorMethod.Copy, ChunkAligned(offset, Math.Min(status.Length, _maxIo)));
        }

        // A zero run shorter than one chunk says nothing about the rest of the chunk (data may follow
        // within it): copy the chunk, never zero it.
        if (status.Length < _granularity && offset + status.Length < _length)
        {
            return (MirrorMethod.Copy, ChunkAligned(offset, _granularity));
        }

        var io = ChunkAligned(offset, status.Length);

        // Zeroing or discarding only part of a target cluster could make the target allocate it or read
        // stale data from its backing; copy the zeroes instead, as QEMU does.
        if (offset % _targetCluster != 0 || (io % _targetCluster != 0 && offset + io != _length))
        {
            return (MirrorMethod.Copy, Math.Min(io, _maxIo));
        }

        return (status.IsZero ? MirrorMethod.Zero : MirrorMethod.Discard, io);
    }

    /// <summary>Rounds a run down to whole chunks, but never below one chunk nor past the device end.</summary>
    long ChunkAligned(long offset, long length)
    {
        length -= length % _granularity;
        length = Math.Max(length, _granularity);
        return Math.Min(length, _length - offset);
    }

    async Task StartCopyAsync(long offset, long length)
    {
        var chunks = (int)((length + _granularity - 1) / _granularity);
        MirrorOp op;
        while (true)
        {
            lock (_opLock)
            {
                if (_buffers!.FreeChunks >= chunks)
                {
                    op = RentOpLocked(offset, length, MirrorMethod.Copy, initialZeroing: false);
                    _buffers.Take(length, op.ReadSegments);
                    op.FillWriteSegments();
                    break;
                }
            }

            await WaitForIoAsync().ConfigureAwait(false);
        }

        _ = RunOpAsync(op);
    }

    void StartZeroOrDiscard(long offset, long length, MirrorMethod method, bool initialZeroing)
    {
        MirrorOp op;
        lock (_opLock)
        {
            op = RentOpLocked(offset, length, method, initialZeroing);
        }

        _ = RunOpAsync(op);
    }

    MirrorOp RentOpLocked(long offset, long length, MirrorMethod method, bool initialZeroing)
    {
        var op = _opPool.Count > 0 ? _opPool.Pop() : new MirrorOp();
        op.Offset = offset;
        op.Length = length;
        op.Method = method;
        op.InitialZeroing = initialZeroing;
        _inFlight++;
        _bytesInFlight += length;
        return op;
    }

    async Task RunOpAsync(MirrorOp op)
    {
        var succeeded = false;
        try
        {
            var cancel = _forceCancel.Token;
            switch (op.Method)
            {
                case MirrorMethod.Copy:
                    try
                    {
                        await _read.ReadVectorAsync(op.Offset, op.ReadSegments, cancel).ConfigureAwait(false);
                    }
                    catch (BlockIOException ex)
                    {
                        Failed(op, isRead: true, ex);
                        return;
                    }

                    await _target.WriteVectorAsync(op.Offset, op.WriteSegments, RequestFlags.None, cancel).ConfigureAwait(false);
                    break;
                case MirrorMethod.Zero:
                    await _target.WriteZeroesAsync(op.Offset, op.Length, _options.Unmap ? RequestFlags.MayUnmap : RequestFlags.None, cancel).ConfigureAwait(false);
                    break;
                case MirrorMethod.Discard:
                    await _target.DiscardAsync(op.Offset, op.Length, cancel).ConfigureAwait(false);
                    break;
            }

            succeeded = true;
        }
        catch (BlockIOException ex)
        {
            Failed(op, isRead: false, ex);
        }
        catch (OperationCanceledException)
        {
            // A forced cancel aborted it; the job is ending and the range no longer matters.
        }
        catch (Exception ex)
        {
            // Not an I/O error: a bug. Fail the job rather than lose the range silently.
            _dirty.SetDirty(op.Offset, op.Length);
            lock (_opLock)
            {
                _ioFailure ??= ex;
            }
        }
        finally
        {
            OperationDone(op, succeeded);
        }
    }

    /// <summary>A failed operation: its range is dirty again (it will be retried), then the side's policy decides.</summary>
    void Failed(MirrorOp op, bool isRead, BlockIOException ex)
    {
        _dirty.SetDirty(op.Offset, op.Length);
        var action = HandleIoError(isRead ? _options.OnSourceError : _options.OnTargetError, isRead, ex.Errno);
        if (action == BlockErrorAction.Report)
        {
            lock (_opLock)
            {
                _ioFailure ??= ex;
            }
        }
    }

    void OperationDone(MirrorOp op, bool succeeded)
    {
        TaskCompletionSource? waiter;
        lock (_opLock)
        {
            _inFlight--;
            _bytesInFlight -= op.Length;
            if (op.ReadSegments.Count > 0)
            {
                _buffers?.Return(op.ReadSegments);
                op.WriteSegments.Clear();
            }

            if (!op.InitialZeroing)
            {
                var first = op.Offset / _granularity;
                var count = (op.Offset + op.Length + _granularity - 1) / _granularity - first;
                _inFlightChunks!.Reset(first, count);
                if (succeeded)
                {
                    _cowChunks?.Set(first, count);
                }
            }

            _opPool.Push(op);
            waiter = _ioWaiter;
            _ioWaiter = null;
        }

        if (succeeded && !op.InitialZeroing)
        {
            ProgressAdvance(op.Length);
        }

        waiter?.TrySetResult();
    }

    bool IoFailed
    {
        get
        {
            lock (_opLock)
            {
                return _ioFailure is not null;
            }
        }
    }

    void ThrowIfIoFailed()
    {
        Exception? failure;
        lock (_opLock)
        {
            failure = _ioFailure;
        }

        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>Waits until some operation completes (QEMU's mirror_wait_for_io). Returns at once if none is in flight.</summary>
    Task WaitForIoAsync()
    {
        lock (_opLock)
        {
            if (_inFlight == 0)
            {
                return Task.CompletedTask;
            }

            _ioWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _ioWaiter.Task;
        }
    }

    async Task WaitForAllIoAsync()
    {
        while (InFlight > 0)
        {
            await WaitForIoAsync().ConfigureAwait(false);
        }
    }

    async Task<bool> FlushTargetAsync()
    {
        try
        {
            await _target.FlushAsync(_forceCancel.Token).ConfigureAwait(false);
            return true;
        }
        catch (BlockIOException ex)
        {
            if (HandleIoError(_options.OnTargetError, isRead: false, ex.Errno) == BlockErrorAction.Report)
            {
                lock (_opLock)
                {
                    _ioFailure ??= ex;
                }
            }

            return false;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    // ----- Initial dirtying -----

    /// <summary>
    /// Marks what must be copied before the job can be in sync. A target that already reads as zeroes
    /// needs only the source's non-zero data. Otherwise, as QEMU: zero the whole target first where that
    /// is cheap, else copy everything (zero ranges then become write-zeroes, not data).
    /// </summary>
    async Task DirtyInitAsync()
    {
        var targetIsZero = _base is null && await TargetReadsZeroAsync().ConfigureAwait(false);
        if (_base is null && !targetIsZero)
        {
            if (!_target.Node.Capabilities.CanUnmapOnZero)
            {
                _dirty.SetAll();
                return;
            }

            await ZeroTargetAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            ThrowIfIoFailed();
            targetIsZero = true;
        }

        for (long offset = 0; offset < _length;)
        {
            await ThrottleAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            if (targetIsZero)
            {
                // Only what does not read as zeroes needs copying onto a zero target.
                var status = await BlockChain.GetBlockStatusAboveAsync(_read.Node, null, offset, _length - offset).ConfigureAwait(false);
                if (!status.IsZero)
                {
                    _dirty.SetDirty(offset, status.Length);
                }

                offset += status.Length;
            }
            else
            {
                var (allocated, length) = await BlockChain.IsAllocatedAboveAsync(_read.Node, _base, offset, _length - offset).ConfigureAwait(false);
                if (allocated)
                {
                    _dirty.SetDirty(offset, length);
                }

                offset += length;
            }
        }
    }

    /// <summary>True when every byte of the target reads as zero, as far as block status can tell cheaply.</summary>
    async Task<bool> TargetReadsZeroAsync()
    {
        const int MaxExtents = 4096;
        var extents = 0;
        for (long offset = 0; offset < _length; extents++)
        {
            if (extents >= MaxExtents)
            {
                return false;
            }

            var status = await BlockChain.GetBlockStatusAboveAsync(_target.Node, null, offset, _length - offset).ConfigureAwait(false);
            if (!status.IsZero)
            {
                return false;
            }

            offset += status.Length;
        }

        return true;
    }

    async Task ZeroTargetAsync()
    {
        var step = Math.Max(_granularity, (1L << 30) / _granularity * _granularity);
        for (long offset = 0; offset < _length;)
        {
            await ThrottleAsync().ConfigureAwait(false);
            if (IsCancelled || IoFailed)
            {
                break;
            }

            if (InFlight >= MaxInFlight)
            {
                await WaitForIoAsync().ConfigureAwait(false);
                continue;
            }

            var length = Math.Min(step, _length - offset);
            StartZeroOrDiscard(offset, length, MirrorMethod.Zero, initialZeroing: true);
            offset += length;
        }

        await WaitForAllIoAsync().ConfigureAwait(false);
    }

    /// <summary>Yields once per slice during long setup work, so pauses and cancels are seen (QEMU's mirror_throttle).</summary>
    async ValueTask ThrottleAsync()
    {
        var now = Time.GetUtcNow();
        if (now - _lastPause > SliceTime)
        {
            _lastPause = now;
            await SleepAsync(TimeSpan.Zero).ConfigureAwait(false);
        }
        else
        {
            await PausePointAsync().ConfigureAwait(false);
        }
    }

    // ----- The end -----

    /// <summary>Success: pivot if completion was asked for, otherwise (a cancel after READY) leave the target as a point-in-time copy.</summary>
    protected override Task PrepareAsync() => ExitAsync(abort: false);

    protected override Task AbortAsync() => ExitAsync(abort: true);

    /// <summary>
    /// Takes the filter out and, on a completed job, puts the target in the source's place. Runs inside a
    /// drained section of the source, so no request is in flight while the edges move.
    /// </summary>
    async Task ExitAsync(bool abort)
    {
        if (_exited)
        {
            return;
        }

        _exited = true;
        _source.ReleaseDirtyBitmap(_dirty);
        if (_drain is null)
        {
            _drainStarted = Time.GetTimestamp();
            _drain = await _graph.DrainAsync(_source).ConfigureAwait(false);
        }

        var complete = !abort && _shouldComplete;
        Exception? backingFailure = null;
        try
        {
            // The job stops using source and target before the graph changes, as QEMU's mirror_exit_common:
            // the target's new users (the source's) must not meet the job's refusal of other writers.
            _graph.SetPermissions(_target, BlockPermissions.None, BlockPermissions.All);
            if (_sourceUse is { } sourceUse)
            {
                _graph.SetPermissions(sourceUse, BlockPermissions.None, BlockPermissions.All);
            }

            var target = _target.Node;
            if (complete)
            {
                try
                {
                    await AttachTargetBackingAsync(target).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is BlockOpenException or BlockIOException or JobException)
                {
                    // Nothing has moved yet: end as a cancelled job would, and fail with the reason.
                    backingFailure = ex;
                    complete = false;
                }
            }

            if (complete)
            {
                if (_replaces is { } replaces)
                {
                    // The target takes the named node's place (the source's own, or that of a node under
                    // the source's filters); the filter then gives its users to whatever it leads to now: the
                    // source, whose filter chain ends at the target, or the target itself.
                    _graph.ReplaceNode(replaces, target);
                    _graph.ReplaceNode(_mirrorTop, _read.Node);
                }
                else
                {
                    // Every parent of the source (the filter's own edge included) moves to the target;
                    // then every parent of the filter (the users) follows, and the filter goes.
                    _graph.ReplaceNode(_source, target);
                    _graph.ReplaceNode(_mirrorTop, target);
                }
            }
            else
            {
                _graph.ReplaceNode(_mirrorTop, _source);
            }

            await _graph.DetachRootAsync(_target).ConfigureAwait(false);
            if (_sourceUse is { } used)
            {
                await _graph.DetachRootAsync(used).ConfigureAwait(false);
            }

            await _graph.RemoveNodeAsync(_mirrorTop).ConfigureAwait(false);
            _sourceResizeBlock?.Dispose();
            _targetResizeBlock?.Dispose();
            if (!complete && _reopenedTarget)
            {
                // An active commit that did not complete: the base goes back to read-only, as it was.
                await _graph.ReopenAsync(target, readOnly: true, CancellationToken.None).ConfigureAwait(false);
            }
        }
        finally
        {
            _drain.Dispose();
            _drain = null;
            Interlocked.Exchange(ref _pivotPauseTicks, Time.GetElapsedTime(_drainStarted).Ticks);
        }

        if (backingFailure is not null)
        {
            throw new JobException($"Could not give target '{_target.Node.Name}' its backing: {backingFailure.Message}");
        }
    }

    /// <summary>
    /// Gives a completing target its backing, by the backing mode: the source's base for sync=top (the
    /// source itself for sync=none), or the chain its own header names. A target that already has the
    /// right backing is left alone.
    /// </summary>
    async Task AttachTargetBackingAsync(BlockNode target)
    {
        switch (_options.BackingMode)
        {
            case MirrorBackingMode.SourceBackingChain:
                var backing = _options.Sync == MirrorSyncMode.None ? _source : _base;
                if (!ReferenceEquals(target.Backing, backing))
                {
                    _graph.SetBacking(target, backing);
                }

                break;
            case MirrorBackingMode.OpenBackingChain when target.Backing is null && target.Driver is IBackingFileFormat backingFile:
                await backingFile.OpenBackingFileAsync(_graph, CancellationToken.None).ConfigureAwait(false);
                break;
        }
    }
}
