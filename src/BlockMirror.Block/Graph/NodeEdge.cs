using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// One parent's link to a node (QEMU's BdrvChild, or a BlockBackend when the parent is not a node).
/// Every request is sent through an edge, so replacing the node behind an edge redirects its parent.
/// </summary>
/// <remarks>
/// <para><b>Root edges</b> (parent not a node: exports, jobs, tools) honour drained sections: while the
/// node is quiesced, a new request waits, and when it is let go it reads <see cref="Node"/> again, so a
/// request sent during a drained section that replaced the node goes to the new node.</para>
/// <para><b>Child edges</b> (parent is a node) never wait: a request in flight in the parent must be able
/// to finish, or a drain would deadlock on its own parents.</para>
/// </remarks>
public sealed class NodeEdge
{
    readonly Lock _lock = new();
    BlockNode _node;

    // Root edges only: how many reasons the node behind this edge is quiesced (0 or 1 per node change),
    // and the signal that lets held requests go. Both change under _lock.
    int _quiesce;
    TaskCompletionSource? _released;

    internal NodeEdge(IEdgeParent parent, string name, BlockNode node, ChildRole role = ChildRole.Filtered,
        BlockPermissions permissions = BlockPermissions.None, BlockPermissions shared = BlockPermissions.All)
    {
        Parent = parent;
        Name = name;
        _node = node;
        Role = role;
        Permissions = permissions;
        SharedPermissions = shared;
    }

    /// <summary>For a child edge: how the parent node uses the child, which decides its permissions.</summary>
    public ChildRole Role { get; }

    /// <summary>
    /// What the parent does with the node (QEMU's BdrvChild perm). A root edge's are its user's; a child
    /// edge's follow from its parent node's use and <see cref="Role"/>. Changed only under the graph lock.
    /// </summary>
    public BlockPermissions Permissions { get; internal set; }

    /// <summary>What the parent lets other parents of the node do (QEMU's shared_perm).</summary>
    public BlockPermissions SharedPermissions { get; internal set; }

    /// <summary>The role of the child (<c>file</c>, <c>backing</c>, <c>image</c>) or, for a root edge, what the parent uses it for.</summary>
    public string Name { get; }

    public IEdgeParent Parent { get; }

    /// <summary>The parent when it is a node, else null.</summary>
    public BlockNode? ParentNode => Parent as BlockNode;

    /// <summary>True when the parent is not a node: such an edge honours drained sections.</summary>
    public bool IsRoot => Parent is not BlockNode;

    /// <summary>The node this edge points at now. Changes only inside a drained section.</summary>
    public BlockNode Node => Volatile.Read(ref _node);

    /// <summary>True while the node behind this root edge is in a drained section.</summary>
    public bool IsQuiesced
    {
        get
        {
            lock (_lock)
            {
                return _quiesce > 0;
            }
        }
    }

    internal void Retarget(BlockNode node) => Volatile.Write(ref _node, node);

    internal void QuiesceBegin()
    {
        lock (_lock)
        {
            if (_quiesce++ == 0)
            {
                _released = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }
    }

    internal void QuiesceEnd()
    {
        TaskCompletionSource? released = null;
        lock (_lock)
        {
            System.Diagnostics.Debug.Assert(_quiesce > 0, "unbalanced quiesce on a root edge");
            if (--_quiesce == 0)
            {
                released = _released;
                _released = null;
            }
        }

        released?.TrySetResult();
    }

    /// <summary>
    /// Counts a request in flight on the current node, unless a root edge is quiesced. Checking the
    /// quiesce count and entering happen under one lock, so a drainer that has quiesced this edge and
    /// then sees the node idle can rely on no request slipping in behind it.
    /// </summary>
    bool TryEnter(out BlockNode node, out Task released)
    {
        if (Parent is BlockNode)
        {
            node = Node;
            node.InFlight.Enter();
            released = Task.CompletedTask;
            return true;
        }

        lock (_lock)
        {
            if (_quiesce > 0)
            {
                node = null!;
                released = _released!.Task;
                return false;
            }

            node = Node;
            node.InFlight.Enter();
            released = Task.CompletedTask;
            return true;
        }
    }

    /// <summary>Waits until the edge may send, then enters. Returns the node the request must go to.</summary>
    ValueTask<BlockNode> EnterAsync(CancellationToken cancellationToken)
    {
        if (TryEnter(out var node, out var released))
        {
            return ValueTask.FromResult(node);
        }

        return EnterSlowAsync(this, released, cancellationToken);

        static async ValueTask<BlockNode> EnterSlowAsync(NodeEdge edge, Task released, CancellationToken cancellationToken)
        {
            while (true)
            {
                await released.WaitAsync(cancellationToken).ConfigureAwait(false);
                if (edge.TryEnter(out var node, out released))
                {
                    return node;
                }
            }
        }
    }

    /// <summary>Enters (waiting out a drained section on a root edge) and runs one request on the node.</summary>
    /// <remarks>Synchronous fast path when the edge is open; the slow path is a static local function.</remarks>
    ValueTask Send<TRequest>(TRequest request, CancellationToken cancellationToken)
        where TRequest : struct, INodeRequest
    {
        var entering = EnterAsync(cancellationToken);
        if (entering.IsCompletedSuccessfully)
        {
            return request.RunEnteredAsync(entering.Result, cancellationToken);
        }

        return Slow(entering, request, cancellationToken);

        static async ValueTask Slow(ValueTask<BlockNode> entering, TRequest request, CancellationToken cancellationToken)
        {
            var node = await entering.ConfigureAwait(false);
            await request.RunEnteredAsync(node, cancellationToken).ConfigureAwait(false);
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.Read(offset, buffer), cancellationToken);

    public ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.ReadVector(offset, buffers), cancellationToken);

    /// <summary>A read into a pipe (see <see cref="BlockNode.SpliceReadAsync"/>), through this edge as any read.</summary>
    public ValueTask SpliceReadAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.SpliceRead(offset, length, pipe), cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags = RequestFlags.None, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.Write(offset, buffer, flags), cancellationToken);

    public ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags = RequestFlags.None, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.WriteVector(offset, buffers, flags), cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags = RequestFlags.None, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.WriteZeroes(offset, length, flags), cancellationToken);

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.Discard(offset, length), cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        Send(default(NodeRequests.Flush), cancellationToken);

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken = default) =>
        Send(new NodeRequests.Truncate(length), cancellationToken);

    /// <summary>Block status of the node behind this edge; see <see cref="BlockNode.GetBlockStatusAsync"/>.</summary>
    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        var entering = EnterAsync(cancellationToken);
        if (entering.IsCompletedSuccessfully)
        {
            return entering.Result.GetBlockStatusEnteredAsync(offset, length, cancellationToken);
        }

        return Slow(entering, offset, length, cancellationToken);

        static async ValueTask<BlockStatus> Slow(ValueTask<BlockNode> entering, long offset, long length, CancellationToken cancellationToken)
        {
            var node = await entering.ConfigureAwait(false);
            return await node.GetBlockStatusEnteredAsync(offset, length, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Raises a blkdebug event on the node behind this edge (QEMU's BLKDBG_EVENT(child, event)); allocation-free.</summary>
    public void DebugEvent(BlkdebugEvent e) => Node.DebugEvent(e);

    public override string ToString() => $"{Parent.ParentDescription} -[{Name}]-> '{Node.Name}'";
}
