using System.Runtime.CompilerServices;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// A node of the block graph: one driver, named children, parents' edges, a count of requests in
/// flight, a quiesce count for drained sections, and the dirty bitmaps that writes mark.
/// </summary>
/// <remarks>
/// <para>Every request passes through here on its way to the driver (QEMU's bdrv_co_preadv/pwritev): the
/// node validates it (range, read-only) with an error naming the node, the operation and the range;
/// counts it in flight; hands it to the driver, padded to the driver's request alignment and cut to its
/// maximums when it has to be (BlockNode.Pipeline.cs); and, when a write, write-zeroes or discard
/// completes, marks every enabled dirty bitmap. Marking happens before the request stops counting as in
/// flight, so a drainer that sees the node idle also sees every bit those requests set. Users may send
/// any byte range: an aligned request that fits takes the fast path, which costs one comparison and, for
/// data-changing requests, one interlocked pair (see <see cref="SerialisingRanges"/>).</para>
/// <para>The public request methods here do not wait for drained sections: they are for the node's
/// own parents and for tools that own the graph. Users of the graph send through a root
/// <see cref="NodeEdge"/>, which does.</para>
/// </remarks>
public sealed partial class BlockNode : IEdgeParent
{
    IBlockDriver? _driver;
    bool _closed;

    // Copy-on-write snapshots so the request path reads them without a lock; the graph replaces
    // them under its lock.
    NodeEdge[] _children = [];
    NodeEdge[] _parents = [];
    DirtyBitmap[] _bitmaps = [];

    // Who forbids changing this node's length (QEMU: a parent without the RESIZE permission shared).
    string[] _resizeBlockers = [];

    // Reasons this node is quiesced: its own drained sections plus one per quiesced child. Changed
    // only under the graph lock (QEMU's quiesce_counter).
    int _quiesceCount;

    internal BlockNode(BlockGraph graph, string name, bool autoNamed, bool readOnly)
    {
        Graph = graph;
        Name = name;
        IsAutoNamed = autoNamed;
        ReadOnly = readOnly;
    }

    public BlockGraph Graph { get; }

    /// <summary>The node name (QEMU's node-name); generated names start with '#'.</summary>
    public string Name { get; }

    /// <summary>The name was generated: the node was created implicitly for a parent and goes away with it.</summary>
    public bool IsAutoNamed { get; }

    /// <summary>Data-changing requests are refused with EPERM. Changes only through <see cref="BlockGraph.ReopenAsync"/>.</summary>
    public bool ReadOnly { get; internal set; }

    /// <summary>
    /// The node was opened with <c>cache.direct=on</c> (its own or inherited from an inline parent): what
    /// <c>query-named-block-nodes</c> reports as <c>cache.direct</c>. The file driver acts on it (O_DIRECT).
    /// </summary>
    public bool Direct { get; internal set; }

    /// <summary>
    /// Read-only only because nothing needed to write it (a backing file opened from a header, or QEMU's
    /// <c>auto-read-only</c>): a job that must write it (a commit into it) may reopen it read-write. A node
    /// the user asked to be read-only stays so.
    /// </summary>
    public bool AutoReadOnly { get; set; }

    /// <summary>
    /// Every edge to this node shares everything (qemu-img's <c>-U</c>, QEMU's force-share): for read-only
    /// tools that accept reading an image someone else writes. Set before the node gets parents.
    /// </summary>
    public bool ForceShare { get; internal set; }

    public IBlockDriver Driver => _driver ?? throw new InvalidOperationException($"node '{Name}' has no driver yet");

    public string ParentDescription => $"node '{Name}'";

    public long Length => Driver.Length;

    public BlockLimits Limits => Driver.Limits;

    public DriverCapabilities Capabilities => Driver.Capabilities;

    public InFlightTracker InFlight { get; } = new();

    /// <summary>True while some drained section covers this node.</summary>
    public bool IsQuiesced => Volatile.Read(ref _quiesceCount) > 0;

    public IReadOnlyList<NodeEdge> Children => Volatile.Read(ref _children);

    public IReadOnlyList<NodeEdge> Parents => Volatile.Read(ref _parents);

    public IReadOnlyList<DirtyBitmap> DirtyBitmaps => Volatile.Read(ref _bitmaps);

    /// <summary>The child edge with this role, or null.</summary>
    public NodeEdge? GetChild(string name)
    {
        foreach (var edge in Volatile.Read(ref _children))
        {
            if (edge.Name == name)
            {
                return edge;
            }
        }

        return null;
    }

    /// <summary>The <c>file</c> child of a format node.</summary>
    public NodeEdge? File => GetChild(ChildNames.File);

    /// <summary>The backing node, or null when there is none (or the format has no backing).</summary>
    public BlockNode? Backing => GetChild(ChildNames.Backing)?.Node;

    /// <summary>For a filter: the child every request passes to.</summary>
    public NodeEdge? FilteredChild =>
        Driver.Kind == DriverKind.Filter && Driver.FilteredChildName is { } name ? GetChild(name) : null;

    /// <summary>
    /// The next node down a backing chain: a filter's child, or a format's backing node. What this node
    /// does not answer itself is read from there.
    /// </summary>
    public BlockNode? ChainChild => FilteredChild?.Node ?? (Driver.Capabilities.SupportsBacking ? Backing : null);

    /// <summary>Attaches a child under a role; the parent's driver sends to it through the returned edge.</summary>
    /// <remarks>
    /// The role decides the permissions the edge takes from this node's use (<see cref="ChildRole"/>); without
    /// one it follows the name (<see cref="Permissions.RoleOf"/>). Refused when another user of the child forbids what the edge takes.
    /// </remarks>
    public NodeEdge AttachChild(string name, BlockNode child, ChildRole? role = null) =>
        Graph.AttachChild(this, name, child, role ?? Permissions.RoleOf(name));

    /// <summary>Detaches a child edge of this node.</summary>
    public void DetachChild(NodeEdge edge) => Graph.DetachChild(this, edge);

    public override string ToString() => $"'{Name}' ({_driver?.DriverName ?? "opening"})";

    internal void SetDriver(IBlockDriver driver) => _driver = driver;

    internal IBlockDriver? DriverOrNull => _driver;

    internal bool Closed
    {
        get => _closed;
        set => _closed = value;
    }

    internal void SetChildren(NodeEdge[] children) => Volatile.Write(ref _children, children);

    internal void SetParents(NodeEdge[] parents) => Volatile.Write(ref _parents, parents);

    // ----- Quiesce propagation (called under the graph lock) -----

    /// <summary>One more reason to be quiesced; the first one quiesces every parent, up to the roots.</summary>
    internal void QuiesceBeginLocked()
    {
        if (_quiesceCount++ > 0)
        {
            return;
        }

        foreach (var edge in _parents)
        {
            QuiesceParentLocked(edge);
        }
    }

    /// <summary>One reason fewer; the last one lets every parent go.</summary>
    internal void QuiesceEndLocked()
    {
        System.Diagnostics.Debug.Assert(_quiesceCount > 0, "unbalanced quiesce");
        if (--_quiesceCount > 0)
        {
            return;
        }

        foreach (var edge in _parents)
        {
            UnquiesceParentLocked(edge);
        }
    }

    internal static void QuiesceParentLocked(NodeEdge edge)
    {
        if (edge.ParentNode is { } parent)
        {
            parent.QuiesceBeginLocked();
        }
        else
        {
            edge.QuiesceBegin();
        }
    }

    internal static void UnquiesceParentLocked(NodeEdge edge)
    {
        if (edge.ParentNode is { } parent)
        {
            parent.QuiesceEndLocked();
        }
        else
        {
            edge.QuiesceEnd();
        }
    }

    // ----- Resize blockers -----

    /// <summary>
    /// Forbids truncating this node until the returned handle is disposed: a job copying it relies on its
    /// length. Truncate requests then fail with EBUSY naming <paramref name="holder"/>.
    /// </summary>
    public IDisposable BlockResize(string holder)
    {
        lock (Graph.SyncRoot)
        {
            Volatile.Write(ref _resizeBlockers, [.. _resizeBlockers, holder]);
        }

        return new ResizeBlock(this, holder);
    }

    sealed class ResizeBlock(BlockNode node, string holder) : IDisposable
    {
        int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
            {
                return;
            }

            lock (node.Graph.SyncRoot)
            {
                var blockers = new List<string>(node._resizeBlockers);
                blockers.Remove(holder);
                Volatile.Write(ref node._resizeBlockers, [.. blockers]);
            }
        }
    }

    // ----- Dirty bitmaps -----

    /// <summary>Creates an enabled dirty bitmap that every later write, write-zeroes and discard on this node marks.</summary>
    /// <param name="granularity">Bytes per bit: a power of two from 512 B to 64 MiB.</param>
    /// <param name="name">Optional; names are unique per node.</param>
    public DirtyBitmap CreateDirtyBitmap(long granularity, string? name = null)
    {
        lock (Graph.SyncRoot)
        {
            if (name is not null && Array.Exists(_bitmaps, b => b.Name == name))
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"Bitmap already exists: {name}");
            }

            var bitmap = new DirtyBitmap(this, name, granularity, Length);
            Volatile.Write(ref _bitmaps, [.. _bitmaps, bitmap]);
            return bitmap;
        }
    }

    /// <summary>Removes a bitmap; writes stop marking it.</summary>
    public void ReleaseDirtyBitmap(DirtyBitmap bitmap)
    {
        lock (Graph.SyncRoot)
        {
            Volatile.Write(ref _bitmaps, Array.FindAll(_bitmaps, b => !ReferenceEquals(b, bitmap)));
        }
    }

    /// <summary>Counts completed data-changing requests; a flush with nothing new to make durable is skipped.</summary>
    long _writeGeneration;

    /// <summary>The <see cref="_writeGeneration"/> the last successful flush covered.</summary>
    long _flushedGeneration;

    /// <summary>Called when a data-changing request has ended (also a failed one: it may have changed part of its range).</summary>
    void MarkDirty(long offset, long length)
    {
        Interlocked.Increment(ref _writeGeneration);
        foreach (var bitmap in Volatile.Read(ref _bitmaps))
        {
            if (bitmap.Enabled)
            {
                bitmap.SetDirty(offset, length);
            }
        }
    }

    // ----- Validation -----

    BlockIOException Refuse(BlockErrno errno, BlockOperation operation, long offset, long length, string detail) =>
        BlockIOException.Create(errno, Name, operation, offset, length, detail);

    void ValidateRange(BlockOperation operation, long offset, long length)
    {
        if (offset < 0 || length < 0)
        {
            throw RefuseInvalid(BlockErrno.EINVAL, operation, offset, length, "negative offset or length");
        }

        var size = Driver.Length;
        if (offset > size || length > size - offset)
        {
            throw RefuseInvalid(BlockErrno.EINVAL, operation, offset, length, $"request runs past the end of the device ({size} bytes)");
        }
    }

    void ValidateWrite(BlockOperation operation, long offset, long length)
    {
        if (ReadOnly)
        {
            throw RefuseInvalid(BlockErrno.EPERM, operation, offset, length, "node is read-only");
        }

        ValidateRange(operation, offset, length);
    }

    static bool IsForeign(Exception ex) => ex is not BlockIOException and not OperationCanceledException;

    /// <summary>A driver failure that is not yet a block error (a bug, an unexpected IOException) becomes EIO with context.</summary>
    BlockIOException Wrap(Exception ex, BlockOperation operation, long offset, long length) =>
        BlockIOException.Create(ex is IOException io && io.HResult is > 0 and < 4096 ? BlockErrnoText.FromErrno(io.HResult) : BlockErrno.EIO,
            Name, operation, offset, length, ex.Message, ex);

    RequestFlags DriverWriteFlags(RequestFlags flags) =>
        Driver.Capabilities.CanFua ? flags : flags & ~RequestFlags.Fua;

    bool NeedsFlushAfter(RequestFlags flags) => (flags & RequestFlags.Fua) != 0 && !Driver.Capabilities.CanFua;

    // ----- Requests (public: not gated by drained sections; see remarks) -----

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return ReadEnteredAsync(offset, buffer, cancellationToken);
    }

    public ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return ReadVectorEnteredAsync(offset, buffers, cancellationToken);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags = RequestFlags.None, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return WriteEnteredAsync(offset, buffer, flags, cancellationToken);
    }

    public ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags = RequestFlags.None, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return WriteVectorEnteredAsync(offset, buffers, flags, cancellationToken);
    }

    public ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags = RequestFlags.None, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return WriteZeroesEnteredAsync(offset, length, flags, cancellationToken);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return DiscardEnteredAsync(offset, length, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return FlushEnteredAsync(cancellationToken);
    }

    /// <summary>
    /// Block status of this layer from <paramref name="offset"/>, for at most <paramref name="length"/> bytes
    /// (clamped to the device end). Adds <see cref="BlockStatusFlags.Allocated"/> where this layer decides
    /// the content; where a format defers to a backing file that is absent, or shorter than this node, the
    /// range reads as zeroes and is reported Zero but not Allocated.
    /// </summary>
    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return GetBlockStatusEnteredAsync(offset, length, cancellationToken);
    }

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return TruncateEnteredAsync(length, cancellationToken);
    }

    // ----- Request bodies: the caller has already counted the request in flight; these exit it. -----
    // Every request passes through one of these, so their state machines come from a pool
    // (PoolingAsyncValueTaskMethodBuilder) instead of one heap object per request that waits.

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask ReadEnteredAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        try
        {
            ValidateRange(BlockOperation.Read, offset, buffer.Length);
            if (buffer.Length == 0)
            {
                return;
            }

            var started = AccountingStart();
            try
            {
                if (Fits(offset, buffer.Length, Driver.Limits.MaxTransfer))
                {
                    await Driver.ReadAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ReadPipelinedAsync(offset, ReadTarget.Of(buffer), cancellationToken).ConfigureAwait(false);
                }

                Accounted(BlockOperation.Read, offset, buffer.Length, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Read, offset, buffer.Length, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Read, offset, buffer.Length);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask ReadVectorEnteredAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        try
        {
            var length = IoVectors.TotalLength(buffers);
            ValidateRange(BlockOperation.Read, offset, length);
            if (length == 0)
            {
                return;
            }

            var started = AccountingStart();
            try
            {
                if (Fits(offset, length, Driver.Limits.MaxTransfer))
                {
                    await Driver.ReadVectorAsync(offset, buffers, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ReadPipelinedAsync(offset, ReadTarget.Of(buffers), cancellationToken).ConfigureAwait(false);
                }

                Accounted(BlockOperation.Read, offset, length, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Read, offset, length, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Read, offset, length);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask WriteEnteredAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        try
        {
            ValidateWrite(BlockOperation.Write, offset, buffer.Length);
            if (buffer.Length == 0)
            {
                return;
            }

            CheckWriteThreshold(offset, buffer.Length);
            if (DetectsZeroes(buffer.Span))
            {
                await ZeroesToDriverAsync(BlockOperation.Write, offset, buffer.Length, DetectedZeroFlags(flags), cancellationToken).ConfigureAwait(false);
                return;
            }

            DebugEvent(BlkdebugEvent.Pwritev);

            var started = AccountingStart();
            try
            {
                if (Fits(offset, buffer.Length, Driver.Limits.MaxTransfer) && _serialising.TryEnterPlain())
                {
                    try
                    {
                        await Driver.WriteAsync(offset, buffer, DriverWriteFlags(flags), cancellationToken).ConfigureAwait(false);
                        if (NeedsFlushAfter(flags))
                        {
                            await Driver.FlushAsync(cancellationToken).ConfigureAwait(false);
                        }
                    }
                    finally
                    {
                        _serialising.ExitPlain();
                    }
                }
                else
                {
                    await WritePipelinedAsync(offset, WriteSource.Of(buffer), flags, cancellationToken).ConfigureAwait(false);
                }

                Accounted(BlockOperation.Write, offset, buffer.Length, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Write, offset, buffer.Length, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Write, offset, buffer.Length);
            }
            finally
            {
                // Also on failure: a failed write may have changed part of the range.
                MarkDirty(offset, buffer.Length);
                DebugEvent(BlkdebugEvent.PwritevDone);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask WriteVectorEnteredAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        try
        {
            var length = IoVectors.TotalLength(buffers);
            ValidateWrite(BlockOperation.Write, offset, length);
            if (length == 0)
            {
                return;
            }

            CheckWriteThreshold(offset, length);
            if (DetectsZeroes(buffers))
            {
                await ZeroesToDriverAsync(BlockOperation.Write, offset, length, DetectedZeroFlags(flags), cancellationToken).ConfigureAwait(false);
                return;
            }

            DebugEvent(BlkdebugEvent.Pwritev);

            var started = AccountingStart();
            try
            {
                if (Fits(offset, length, Driver.Limits.MaxTransfer) && _serialising.TryEnterPlain())
                {
                    try
                    {
                        await Driver.WriteVectorAsync(offset, buffers, DriverWriteFlags(flags), cancellationToken).ConfigureAwait(false);
                        if (NeedsFlushAfter(flags))
                        {
                            await Driver.FlushAsync(cancellationToken).ConfigureAwait(false);
                        }
                    }
                    finally
                    {
                        _serialising.ExitPlain();
                    }
                }
                else
                {
                    await WritePipelinedAsync(offset, WriteSource.Of(buffers), flags, cancellationToken).ConfigureAwait(false);
                }

                Accounted(BlockOperation.Write, offset, length, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Write, offset, length, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Write, offset, length);
            }
            finally
            {
                MarkDirty(offset, length);
                DebugEvent(BlkdebugEvent.PwritevDone);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask WriteZeroesEnteredAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        try
        {
            ValidateWrite(BlockOperation.WriteZeroes, offset, length);
            if (length == 0)
            {
                return;
            }

            CheckWriteThreshold(offset, length);
            await ZeroesToDriverAsync(BlockOperation.WriteZeroes, offset, length, flags, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            InFlight.Exit();
        }
    }

    /// <summary>
    /// A validated write-zeroes on its way to the driver: whole, or padded and cut by the pipeline; counted as
    /// <paramref name="operation"/> (a write whose zeroes were detected stays a write) and marked dirty.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask ZeroesToDriverAsync(BlockOperation operation, long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        DebugEvent(BlkdebugEvent.PwritevZero);

        var started = AccountingStart();
        try
        {
            if (Fits(offset, length, Driver.Limits.MaxWriteZeroes) && _serialising.TryEnterPlain())
            {
                try
                {
                    await Driver.WriteZeroesAsync(offset, length, DriverWriteFlags(flags), cancellationToken).ConfigureAwait(false);
                    if (NeedsFlushAfter(flags))
                    {
                        await Driver.FlushAsync(cancellationToken).ConfigureAwait(false);
                    }
                }
                finally
                {
                    _serialising.ExitPlain();
                }
            }
            else
            {
                await WriteZeroesPipelinedAsync(offset, length, flags, cancellationToken).ConfigureAwait(false);
            }

            Accounted(operation, offset, length, started);
        }
        catch (Exception) when (AccountFailure(operation, offset, length, started))
        {
            throw; // never reached: the filter only counts
        }
        catch (Exception ex) when (IsForeign(ex))
        {
            throw Wrap(ex, operation, offset, length);
        }
        finally
        {
            MarkDirty(offset, length);
            DebugEvent(BlkdebugEvent.PwritevDone);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask DiscardEnteredAsync(long offset, long length, CancellationToken cancellationToken)
    {
        try
        {
            ValidateWrite(BlockOperation.Discard, offset, length);
            if (length == 0)
            {
                return;
            }

            if (DiscardUnmaps)
            {
                CheckWriteThreshold(offset, length);
            }

            var started = AccountingStart();
            try
            {
                if (DropsDiscards)
                {
                    // discard=ignore: QEMU's bdrv_co_pdiscard returns here, so the node's children never see it
                    // (a format's file, which QEMU opens with discard=unmap, would punch it).
                    Accounted(BlockOperation.Discard, offset, length, started);
                    return;
                }

                if (Fits(offset, length, Driver.Limits.MaxDiscard) && _serialising.TryEnterPlain())
                {
                    try
                    {
                        await Driver.DiscardAsync(offset, length, cancellationToken).ConfigureAwait(false);
                    }
                    finally
                    {
                        _serialising.ExitPlain();
                    }
                }
                else
                {
                    await DiscardPipelinedAsync(offset, length, cancellationToken).ConfigureAwait(false);
                }

                Accounted(BlockOperation.Discard, offset, length, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Discard, offset, length, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Discard, offset, length);
            }
            finally
            {
                MarkDirty(offset, length);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask FlushEnteredAsync(CancellationToken cancellationToken)
    {
        try
        {
            // Nothing written through this node since the last flush (or ever, for a read-only node): the
            // flush has nothing to make durable. QEMU's bdrv_co_flush skips the same way; it matters at a
            // mirror's switch-over, whose final flush would otherwise wait for an fdatasync of nothing.
            var started = AccountingStart();
            var generation = Volatile.Read(ref _writeGeneration);
            if (ReadOnly)
            {
                Accounted(BlockOperation.Flush, 0, 0, started);
                return;
            }

            // The events QEMU's bdrv_co_flush raises on the primary child: to the OS on every flush, to the
            // disk only when there is something to make durable.
            PrimaryChild?.DebugEvent(BlkdebugEvent.FlushToOs);
            if (generation == Volatile.Read(ref _flushedGeneration))
            {
                Accounted(BlockOperation.Flush, 0, 0, started);
                return;
            }

            PrimaryChild?.DebugEvent(BlkdebugEvent.FlushToDisk);

            try
            {
                await Driver.FlushAsync(cancellationToken).ConfigureAwait(false);
                // Writes that ended after `generation` was read are not covered: record no more than it.
                long flushed;
                do
                {
                    flushed = Volatile.Read(ref _flushedGeneration);
                }
                while (flushed < generation && Interlocked.CompareExchange(ref _flushedGeneration, generation, flushed) != flushed);

                Accounted(BlockOperation.Flush, 0, 0, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Flush, 0, 0, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Flush, 0, 0);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    internal async ValueTask<BlockStatus> GetBlockStatusEnteredAsync(long offset, long length, CancellationToken cancellationToken)
    {
        try
        {
            var size = Driver.Length;
            if (offset < 0 || length < 0 || offset > size)
            {
                throw Refuse(BlockErrno.EINVAL, BlockOperation.BlockStatus, offset, length,
                    offset > size ? $"offset is past the end of the device ({size} bytes)" : "negative offset or length");
            }

            length = Math.Min(length, size - offset);
            if (length == 0)
            {
                return new BlockStatus(BlockStatusFlags.None, 0);
            }

            BlockStatus status;
            try
            {
                status = await Driver.GetBlockStatusAsync(offset, length, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.BlockStatus, offset, length);
            }

            System.Diagnostics.Debug.Assert(status.Length > 0 && status.Length <= length, $"driver {Driver.DriverName} answered block status for {status.Length} of {length} bytes");
            var run = Math.Clamp(status.Length, 1, length);
            return CompleteStatus(status with { Length = run }, offset);
        }
        finally
        {
            InFlight.Exit();
        }
    }

    /// <summary>Adds what the node knows and the driver does not: allocation, and the backing file's shape.</summary>
    BlockStatus CompleteStatus(BlockStatus status, long offset)
    {
        if (Driver.Kind == DriverKind.Filter)
        {
            // A filter's answer is its child's, already completed by the child node.
            return status;
        }

        if ((status.Flags & (BlockStatusFlags.Data | BlockStatusFlags.Zero)) != 0)
        {
            return status with { Flags = status.Flags | BlockStatusFlags.Allocated };
        }

        if (!Driver.Capabilities.SupportsBacking)
        {
            // A protocol or format without backing that reports nothing still decides the content.
            return status with { Flags = status.Flags | BlockStatusFlags.Allocated };
        }

        var backing = Backing;
        if (backing is null)
        {
            return status with { Flags = status.Flags | BlockStatusFlags.Zero };
        }

        var backingLength = backing.Length;
        if (offset >= backingLength)
        {
            // Past the end of a shorter backing file the overlay reads zeroes.
            return status with { Flags = status.Flags | BlockStatusFlags.Zero };
        }

        // The answer must not run across the backing file's end, where the meaning changes.
        return status with { Length = Math.Min(status.Length, backingLength - offset) };
    }

    internal async ValueTask TruncateEnteredAsync(long length, CancellationToken cancellationToken)
    {
        try
        {
            if (length < 0)
            {
                throw Refuse(BlockErrno.EINVAL, BlockOperation.Truncate, 0, length, "negative length");
            }

            if (ReadOnly)
            {
                throw Refuse(BlockErrno.EPERM, BlockOperation.Truncate, 0, length, "node is read-only");
            }

            if (Volatile.Read(ref _resizeBlockers) is [var holder, ..])
            {
                throw Refuse(BlockErrno.EBUSY, BlockOperation.Truncate, 0, length, $"the length cannot change while {holder} uses the node");
            }

            if (!Driver.Capabilities.CanTruncate)
            {
                throw Refuse(BlockErrno.ENOTSUP, BlockOperation.Truncate, 0, length, $"driver '{Driver.DriverName}' cannot change the length");
            }

            var alignment = Driver.Limits.RequestAlignment;
            if (alignment > 1 && length % alignment != 0)
            {
                throw Refuse(BlockErrno.EINVAL, BlockOperation.Truncate, 0, length, $"length is not a multiple of the node's request alignment of {alignment} bytes");
            }

            var oldLength = Driver.Length;
            try
            {
                await Driver.TruncateAsync(length, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Truncate, 0, length);
            }

            foreach (var bitmap in Volatile.Read(ref _bitmaps))
            {
                bitmap.Resize(length);
            }

            if (length > oldLength)
            {
                // New bytes are new content as far as any bitmap user is concerned.
                MarkDirty(oldLength, length - oldLength);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }
}
