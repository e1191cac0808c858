using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>Starting a mirror or an active commit: the checks, the filter'\''s insertion, the job'\''s registration.</summary>
public sealed partial class MirrorJob
{
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

        var syncBitmap = CheckSyncBitmap(source, target, options);
        var replaces = options.Replaces is { } replacesName ? CheckReplaces(graph, source, replacesName) : null;
        // sync=bitmap: the job's chunks are the bitmap's (Proxmox's rule), so its bits carry over one to one.
        var granularity = syncBitmap?.Granularity ?? (options.Granularity != 0 ? options.Granularity : DefaultGranularity(target.Limits.ClusterSize, source.Length));
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
            return await StartGatedAsync(manager, graph, source, target, options, granularity, bufSize, type, @base, usedNodes, reopenedTarget, replaces, syncBitmap, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            manager.StartGate.Release();
        }
    }

    /// <summary>The part of <see cref="StartCoreAsync"/> that runs under the job manager's start gate.</summary>
    static async Task<MirrorJob> StartGatedAsync(JobManager manager, BlockGraph graph, BlockNode source, BlockNode target,
        MirrorOptions options, long granularity, long bufSize, JobType type, BlockNode? @base, IReadOnlyList<BlockNode> usedNodes,
        bool reopenedTarget, BlockNode? replaces, DirtyBitmap? syncBitmap, CancellationToken cancellationToken)
    {
        manager.ValidateNewId(options.JobId);
        manager.CheckNodesFree(options.JobId, [.. usedNodes]);
        if (syncBitmap is not null)
        {
            // Another start may have taken it while this one waited for the gate.
            CheckUsable(source, syncBitmap);
        }

        var (logPath, log) = PlanWriteIntentLog(source, target, options);
        try
        {
            return await StartDrainedAsync(manager, graph, source, target, options, granularity, bufSize, type, @base, usedNodes, reopenedTarget,
                replaces, syncBitmap, logPath, log, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            // A resumed log stays for another try; a new one was removed where its creation was undone.
            log?.Dispose();
            throw;
        }
    }

    /// <summary>The graph change of <see cref="StartGatedAsync"/>, in one drained section of the source, and the job's registration.</summary>
    static async Task<MirrorJob> StartDrainedAsync(JobManager manager, BlockGraph graph, BlockNode source, BlockNode target,
        MirrorOptions options, long granularity, long bufSize, JobType type, BlockNode? @base, IReadOnlyList<BlockNode> usedNodes,
        bool reopenedTarget, BlockNode? replaces, DirtyBitmap? syncBitmap, string? logPath, WriteIntentLog? log, CancellationToken cancellationToken)
    {
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

                try
                {
                    // The log's file is made last, once everything else has been checked and taken (MirrorJob.WriteIntent.cs).
                    log ??= logPath is null ? null : CreateWriteIntentLog(logPath, source, target, options, granularity, syncBitmap);
                    ((MirrorTopFilter)mirrorTop.Driver).Log = log;
                }
                catch
                {
                    graph.ReplaceNode(mirrorTop, source);
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
            if (syncBitmap is not null)
            {
                // In the same drained section: a write after it marks both bitmaps, none falls between.
                syncBitmap.Busy = true;
                MergeInto(dirty, syncBitmap);
            }

            if (options.Resume)
            {
                // What the crashed job had not copied, or had seen written since: all of it, region by region.
                var length = source.Length;
                log!.ForEachMarked((offset, regionLength) => dirty.SetDirty(offset, Math.Min(regionLength, length - offset)));
            }
        }

        var job = new MirrorJob(manager, graph, source, mirrorTop, targetEdge, @base, options, granularity, bufSize, dirty, type, usedNodes, reopenedTarget)
        {
            _sourceResizeBlock = sourceResize,
            _targetResizeBlock = targetResize,
            _replaces = replaces,
            _sourceUse = sourceUse,
            _syncBitmap = syncBitmap,
            _log = log,
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

    /// <summary>
    /// Chunks a mirror's dirty bitmap holds at most when the user gave no granularity: 64 Mi, one bit each,
    /// so 8 MiB of bitmap (and as much again for the engine's in-flight map). That is a 4 TiB disk at 64 KiB.
    /// </summary>
    public const long MaxDefaultChunks = 1L << 26;

    /// <summary>The largest granularity <see cref="DefaultGranularity"/> picks: QEMU's largest single copy (MAX_IO_BYTES).</summary>
    public const long MaxDefaultGranularity = 1L << 20;

    /// <summary>
    /// The granularity a mirror of a <paramref name="length"/>-byte source uses when the user gave none. As
    /// QEMU's bdrv_get_default_bitmap_granularity: the target's cluster size (<paramref name="targetCluster"/>)
    /// clamped to 4 KiB..64 KiB, 64 KiB when it has none (0). Then, ours: doubled while the bitmap would hold
    /// more than <see cref="MaxDefaultChunks"/> chunks, up to <see cref="MaxDefaultGranularity"/>, so that the
    /// bitmaps of a larger disk stay at 8 MiB each instead of growing with it (QEMU keeps 64 KiB: 16 TiB costs
    /// it 32 MiB per bitmap, 64 TiB 128 MiB).
    /// </summary>
    /// <remarks>
    /// What a disk costs, per bitmap (the dirty bitmap and the in-flight map; their summary levels add under 2%):
    /// up to 4 TiB, 64 KiB chunks and at most 8 MiB (a 4 KiB-cluster qcow2 target keeps its 4 KiB chunks up to
    /// 256 GiB); 16 TiB, 256 KiB chunks; 64 TiB, 1 MiB chunks; beyond 64 TiB the chunks stay at 1 MiB and the
    /// bitmap grows by 128 KiB per TiB (1 PiB: 128 MiB). A coarser chunk costs the initial copy little (its
    /// runs are whole extents, rounded out to chunks at their ends), but a guest write during the job dirties,
    /// and later copies, a whole chunk.
    /// </remarks>
    public static long DefaultGranularity(int targetCluster, long length)
    {
        long granularity = targetCluster == 0 ? 64 * 1024 : Math.Clamp(targetCluster, 4096, 64 * 1024);
        while (granularity < MaxDefaultGranularity && (length + granularity - 1) / granularity > MaxDefaultChunks)
        {
            granularity *= 2;
        }

        return granularity;
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

    /// <summary>
    /// QEMU's condition for its cow_bitmap: the target names a backing file that is not open (it will be
    /// at completion), and a chunk is smaller than a target cluster, so a partial copy would leave the
    /// rest of a newly allocated cluster to be read, wrongly, from that backing later.
    /// </summary>
    static bool NeedsCowAlignment(BlockNode target, long granularity) =>
        target.Driver.BackingFileName is not null && target.Backing is null && granularity < target.Limits.ClusterSize;

    /// <summary>
    /// The unit a write-blocking guest write's target part is cut to: whole target clusters and chunks where
    /// the target has no backing open now but will read through one after the switch (it names one in its
    /// header, or the job attaches the source's chain: sync=top and none), 1 otherwise. A guest write into
    /// part of an unallocated cluster would fill the rest from nothing; the cluster would then hide what the
    /// backing holds there. Found by the sync=top harness with copy-mode write-blocking: writes lost.
    /// </summary>
    long GuestWriteAlignment(BlockNode target)
    {
        var cluster = target.Limits.ClusterSize;
        var backingLater = target.Driver.BackingFileName is not null || _options.Sync is MirrorSyncMode.Top or MirrorSyncMode.None;
        return cluster > 0 && target.Backing is null && backingLater ? Math.Max(cluster, _granularity) : 1;
    }
}
