using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Commit;

/// <summary>
/// Intermediate commit (QEMU's block/commit.c): copies what the layers from <c>top</c> down to, not
/// including, <c>base</c> hold into <c>base</c>, then drops those layers from the chain: the image above
/// the top is backed by the base, and its header names it. The top is not the active layer, so nothing
/// writes it while the job runs (active commit is a mirror job: <see cref="Mirror.MirrorJob"/>).
/// </summary>
/// <remarks>
/// No READY: the job completes by itself. Progress counts every byte of the top, copied or skipped.
/// A base opened read-only only because it was a backing file is reopened read-write for the job and
/// read-only again afterwards.
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001",
    Justification = "The cancellation source has no timer and no wait handle: nothing to release; it lives as long as the job.")]
public sealed class CommitJob : BlockJob
{
    /// <summary>Bytes per step (QEMU's COMMIT_BUFFER_SIZE).</summary>
    public const int BufferSize = 512 * 1024;

    /// <summary>The pause before a step that failed is tried again.</summary>
    static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(10);

    readonly BlockGraph _graph;
    readonly BlockNode _top;
    readonly BlockNode _base;
    readonly BlockNode _filter;
    readonly NodeEdge _read;
    readonly NodeEdge _write;
    readonly CommitOptions _options;
    readonly bool _reopenedBase;
    readonly IReadOnlyList<BlockNode> _chain;
    readonly CancellationTokenSource _forceCancel = new();
    bool _exited;

    CommitJob(JobManager manager, BlockGraph graph, BlockNode top, BlockNode @base, BlockNode filter, NodeEdge write,
        CommitOptions options, bool reopenedBase, IReadOnlyList<BlockNode> chain)
        : base(manager, options.JobId, JobType.Commit, options.AutoFinalize, options.AutoDismiss, options.Speed)
    {
        _graph = graph;
        _top = top;
        _base = @base;
        _filter = filter;
        _read = ((CommitTopFilter)filter.Driver).Top;
        _write = write;
        _options = options;
        _reopenedBase = reopenedBase;
        _chain = chain;
    }

    public BlockNode Top => _top;

    public BlockNode Base => _base;

    /// <summary>The commit-top filter node inserted above the top.</summary>
    public BlockNode FilterNode => _filter;

    internal override IEnumerable<BlockNode> UsedNodes => _chain;

    /// <summary>
    /// Checks the request, makes the base writable, inserts the commit-top filter above <paramref name="top"/>
    /// and starts the job. Any refusal leaves the graph as it was.
    /// </summary>
    public static async Task<CommitJob> StartAsync(JobManager manager, BlockGraph graph, BlockNode top, BlockNode @base,
        CommitOptions options, CancellationToken cancellationToken = default)
    {
        var chain = CheckChain(top, @base);
        // An overlay reads the top as its backing file; a filter above the top (a job's) is no overlay.
        if (!top.Parents.Any(e => e.ParentNode is not null && e.Role == ChildRole.Cow))
        {
            throw new JobException($"'{top.Name}' is the active layer: commit it with a job that completes on request (top = the active layer)");
        }

        if (options.Speed < 0)
        {
            throw new JobException("Invalid parameter 'speed'");
        }

        if (options.FilterNodeName is { } filterName && BlockGraph.ValidateNodeName(filterName) is { } problem)
        {
            throw new JobException(problem);
        }

        await manager.StartGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            manager.ValidateNewId(options.JobId);
            manager.CheckNodesFree(options.JobId, [.. chain]);
            var reopened = await MakeWritableAsync(graph, @base, cancellationToken).ConfigureAwait(false);
            try
            {
                var parent = new RootParent($"block job '{options.JobId}'");
                BlockNode filter;
                NodeEdge write;
                using (await graph.DrainAsync(top, cancellationToken).ConfigureAwait(false))
                {
                    filter = await graph.CreateNodeAsync(options.FilterNodeName, false, (node, _) =>
                        ValueTask.FromResult<Block.Drivers.IBlockDriver>(new CommitTopFilter(node.AttachChild(ChildNames.Filtered, top))), cancellationToken).ConfigureAwait(false);
                    graph.ReplaceNode(top, filter);

                    // QEMU's commit.c: the job writes the base and may grow it; others may read it (the chain
                    // above reads through it) but not write or resize it until the job ends.
                    try
                    {
                        write = graph.AttachRoot(@base, parent, "base",
                            BlockPermissions.ConsistentRead | BlockPermissions.Write | BlockPermissions.Resize,
                            BlockPermissions.ConsistentRead | BlockPermissions.WriteUnchanged);
                    }
                    catch (BlockGraphException)
                    {
                        graph.ReplaceNode(filter, top);
                        await graph.RemoveNodeAsync(filter).ConfigureAwait(false);
                        throw;
                    }
                }

                var job = new CommitJob(manager, graph, top, @base, filter, write, options, reopened, chain);
                manager.Register(job);
                job.Start();
                return job;
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
        finally
        {
            manager.StartGate.Release();
        }
    }

    /// <summary>
    /// The layers from <paramref name="top"/> down to <paramref name="base"/>, both included, or a refusal
    /// worded as QEMU's when <paramref name="base"/> is not below <paramref name="top"/>.
    /// </summary>
    public static IReadOnlyList<BlockNode> CheckChain(BlockNode top, BlockNode @base)
    {
        if (ReferenceEquals(top, @base))
        {
            throw new JobException("cannot commit an image into itself");
        }

        List<BlockNode> chain = [];
        for (var node = top; node is not null; node = node.ChainChild)
        {
            chain.Add(node);
            if (ReferenceEquals(node, @base))
            {
                return chain;
            }
        }

        throw new JobException($"'{@base.Name}' is not in the backing chain of '{top.Name}'");
    }

    /// <summary>
    /// Reopens a read-only base read-write when it is read-only only because it was a backing file; a base
    /// the user opened read-only is refused. Returns whether it was reopened (and must go back afterwards).
    /// </summary>
    public static async Task<bool> MakeWritableAsync(BlockGraph graph, BlockNode @base, CancellationToken cancellationToken)
    {
        if (!@base.ReadOnly)
        {
            return false;
        }

        if (!@base.AutoReadOnly)
        {
            throw new JobException($"Block node is read-only: '{@base.Name}' was opened read-only; a commit must write into it");
        }

        try
        {
            await graph.ReopenAsync(@base, readOnly: false, cancellationToken).ConfigureAwait(false);
        }
        catch (BlockIOException e)
        {
            throw new JobException($"Could not reopen '{@base.Name}' read-write: {e.Message}");
        }

        return true;
    }

    protected override void OnForceCancelled() => _forceCancel.Cancel();

    protected override async Task RunAsync()
    {
        var length = _top.Length;
        ProgressSetRemaining(length);
        if (_base.Length < length)
        {
            // The base grows to the top's size; the part it never had reads as zeroes, as it did through the chain.
            await _write.TruncateAsync(length, _forceCancel.Token).ConfigureAwait(false);
        }

        using var buffer = new AlignedMemory(BufferSize, AlignedMemory.DirectAlignment);
        var delay = TimeSpan.Zero;
        for (long offset = 0; offset < length;)
        {
            await SleepAsync(delay).ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            delay = TimeSpan.Zero;
            var isRead = true;
            bool allocated;
            long n;
            try
            {
                (allocated, n) = await BlockChain.IsAllocatedAboveAsync(_read.Node, _base, offset, Math.Min(BufferSize, length - offset), _forceCancel.Token).ConfigureAwait(false);
                if (allocated)
                {
                    var part = buffer.Memory[..(int)n];
                    await _read.ReadAsync(offset, part, _forceCancel.Token).ConfigureAwait(false);
                    isRead = false;
                    await _write.WriteAsync(offset, part, RequestFlags.None, _forceCancel.Token).ConfigureAwait(false);
                }
            }
            catch (BlockIOException ex)
            {
                // A failed block-status query counts as a read of the top, as in QEMU. Anything but report
                // tries this same step again (ignore at once, stop once resumed): moving on would leave
                // the base without the step's data while the job still ends as a success.
                if (HandleIoError(_options.OnError, isRead, ex.Errno) == BlockErrorAction.Report)
                {
                    throw;
                }

                // An error that persists under ignore repeats forever, as in QEMU: wait a little between
                // tries so the loop does not take a core, and stays cancellable (the sleep is woken by it).
                delay = RetryDelay;
                continue;
            }

            if (allocated && Speed != 0)
            {
                delay = Limiter.CalculateDelay(n);
            }

            ProgressAdvance(n);
            offset += n;
        }

        await _write.FlushAsync(_forceCancel.Token).ConfigureAwait(false);
    }

    /// <summary>Success: the image above the top is backed by the base from now on, in the graph and in its header.</summary>
    protected override Task PrepareAsync() => ExitAsync(abort: false);

    protected override Task AbortAsync() => ExitAsync(abort: true);

    async Task ExitAsync(bool abort)
    {
        if (_exited)
        {
            return;
        }

        _exited = true;
        List<BlockNode> overlays = [];
        using (await _graph.DrainAsync(_filter).ConfigureAwait(false))
        {
            overlays.AddRange(_filter.Parents.Select(e => e.ParentNode).OfType<BlockNode>());
            _graph.ReplaceNode(_filter, abort ? _top : _base);
            await _graph.DetachRootAsync(_write).ConfigureAwait(false);
        }

        await _graph.RemoveNodeAsync(_filter).ConfigureAwait(false);
        if (abort)
        {
            return;
        }

        var name = _options.BackingFile ?? _base.Driver.FileName;
        foreach (var overlay in overlays)
        {
            if (overlay.Driver is IBackingFileFormat backingFile)
            {
                await RewriteBackingLinkAsync(overlay, backingFile, name).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Writes the base's name and format into an overlay's header. An overlay that is itself a backing file
    /// (the top's overlay below the active layer) is open read-only: as QEMU's bdrv_drop_intermediate, it is
    /// reopened read-write for the rewrite only and read-only again afterwards, whether the rewrite worked or not.
    /// </summary>
    async Task RewriteBackingLinkAsync(BlockNode overlay, IBackingFileFormat backingFile, string? name)
    {
        var readOnly = overlay.ReadOnly;
        if (readOnly)
        {
            await _graph.ReopenAsync(overlay, readOnly: false).ConfigureAwait(false);
        }

        try
        {
            await backingFile.ChangeBackingFileAsync(name, _base.Driver.DriverName).ConfigureAwait(false);
        }
        finally
        {
            if (readOnly)
            {
                await _graph.ReopenAsync(overlay, readOnly: true).ConfigureAwait(false);
            }
        }
    }

    protected override async Task CleanAsync()
    {
        if (_reopenedBase)
        {
            await _graph.ReopenAsync(_base, readOnly: true).ConfigureAwait(false);
        }
    }
}
