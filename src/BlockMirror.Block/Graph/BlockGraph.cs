using BlockMirror.Block.Drivers;
using BlockMirror.Block.Io;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockMirror.Block.Graph;

/// <summary>
/// The set of nodes and the edges between them. Owns every topology change: creating and removing
/// nodes, attaching children and roots, drained sections, and replacing one node by another.
/// </summary>
/// <remarks>
/// One lock (<see cref="SyncRoot"/>) guards topology and quiesce state. It is never held across an
/// await: drained sections change counters under it, then wait for in-flight requests outside it.
/// </remarks>
public sealed partial class BlockGraph : IAsyncDisposable
{
    /// <summary>QEMU's limit on node names (id_wellformed plus the 31-byte node-name field).</summary>
    public const int MaxNodeNameLength = 31;

    readonly Dictionary<string, BlockNode> _nodes = new(StringComparer.Ordinal);
    readonly List<NodeEdge> _roots = [];
    int _autoNameCounter;

    /// <param name="loggerFactory">Where graph changes are logged (<see cref="BlockGraphLog"/>); none by default.</param>
    public BlockGraph(ILoggerFactory? loggerFactory = null)
    {
        Logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<BlockGraph>();

        // The metrics read every live graph's node statistics when a listener collects.
        Diagnostics.BlockMetrics.Track(this);
    }

    /// <summary>The graph's logger: its own changes, and what its nodes' users log about them.</summary>
    public ILogger Logger { get; }

    internal Lock SyncRoot { get; } = new();

    /// <summary>A snapshot of every node.</summary>
    public IReadOnlyList<BlockNode> Nodes
    {
        get
        {
            lock (SyncRoot)
            {
                return [.. _nodes.Values.Where(n => n.DriverOrNull is not null)];
            }
        }
    }

    /// <summary>A snapshot of every root edge (exports, jobs, tools).</summary>
    public IReadOnlyList<NodeEdge> Roots
    {
        get
        {
            lock (SyncRoot)
            {
                return [.. _roots];
            }
        }
    }

    public BlockNode? FindNode(string name)
    {
        lock (SyncRoot)
        {
            // A name reserved by a creation still opening is not a node yet.
            return _nodes.GetValueOrDefault(name) is { DriverOrNull: not null } node ? node : null;
        }
    }

    /// <summary>
    /// The protocol node that has <paramref name="path"/> open, by the file's identity (device and inode, so a
    /// link or another spelling of the path is found too), or null. A command that would create, truncate or
    /// delete a file asks this first: no open node's file is ever touched behind its back.
    /// </summary>
    public BlockNode? FindNodeUsingFile(string path)
    {
        var fullPath = System.IO.Path.GetFullPath(path);
        foreach (var node in Nodes)
        {
            if (node.Driver is { Kind: DriverKind.Protocol, FileName: { } fileName } &&
                (System.IO.Path.GetFullPath(fileName) == fullPath || Interop.FileStatus.AreSame(fileName, path) == true))
            {
                return node;
            }
        }

        return null;
    }

    /// <summary>The node with this name, or a <see cref="GraphErrorKind.NotFound"/> error worded as QEMU's.</summary>
    public BlockNode GetNode(string name) =>
        FindNode(name) ?? throw new BlockGraphException(GraphErrorKind.NotFound, $"Cannot find device='' nor node-name='{name}'");

    /// <summary>Checks a user-chosen node name as QEMU does: a letter, then letters, digits, '-', '.', '_'.</summary>
    public static string? ValidateNodeName(string name)
    {
        if (name.Length == 0 || !char.IsAsciiLetter(name[0]) ||
            !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_'))
        {
            return $"Invalid node-name: '{name}'";
        }

        return name.Length > MaxNodeNameLength ? $"Node name too long: '{name}'" : null;
    }

    /// <summary>
    /// Creates a node: reserves the name, lets <paramref name="open"/> build the driver (attaching any
    /// children to the node it is given), and publishes the node only when that succeeded. On failure
    /// the children the opener attached are detached again and nothing stays behind.
    /// </summary>
    /// <param name="nodeName">A node name, or null for a generated one (an implicit node).</param>
    public async ValueTask<BlockNode> CreateNodeAsync(string? nodeName, bool readOnly,
        Func<BlockNode, CancellationToken, ValueTask<IBlockDriver>> open, CancellationToken cancellationToken = default)
    {
        BlockNode node;
        lock (SyncRoot)
        {
            string name;
            if (nodeName is null)
            {
                name = $"#block{_autoNameCounter++:D3}";
            }
            else
            {
                if (ValidateNodeName(nodeName) is { } problem)
                {
                    throw new BlockGraphException(GraphErrorKind.Invalid, problem);
                }

                if (_nodes.ContainsKey(nodeName))
                {
                    throw new BlockGraphException(GraphErrorKind.Invalid, $"Duplicate nodes with node-name='{nodeName}'");
                }

                name = nodeName;
            }

            node = new BlockNode(this, name, nodeName is null, readOnly);

            // Reserve the name now so two concurrent creations cannot both take it.
            _nodes.Add(name, node);
        }

        try
        {
            var driver = await open(node, cancellationToken).ConfigureAwait(false);
            node.SetDriver(driver);
            BlockGraphLog.NodeAdded(Logger, node.Name, driver.DriverName, node.ReadOnly ? "read-only" : "read-write");
            return node;
        }
        catch
        {
            await AbandonAsync(node).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Undoes a failed creation: releases the name and the children the opener attached.</summary>
    async ValueTask AbandonAsync(BlockNode node)
    {
        List<BlockNode> orphans = [];
        lock (SyncRoot)
        {
            _nodes.Remove(node.Name);
            foreach (var edge in node.Children)
            {
                DetachChildLocked(node, edge, orphans);
            }
        }

        foreach (var orphan in orphans)
        {
            await CloseNodeAsync(orphan).ConfigureAwait(false);
        }
    }

    internal NodeEdge AttachChild(BlockNode parent, string name, BlockNode child, ChildRole role)
    {
        lock (SyncRoot)
        {
            if (parent.GetChild(name) is not null)
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"node '{parent.Name}' already has a '{name}' child");
            }

            if (ReferenceEquals(parent, child) || IsDescendantLocked(child, parent))
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"making '{child.Name}' the '{name}' child of '{parent.Name}' would create a loop");
            }

            var edge = new NodeEdge(parent, name, child, role);
            var saved = SavePermissionsLocked();
            parent.SetChildren([.. parent.Children, edge]);
            child.SetParents([.. child.Parents, edge]);
            CommitPermissionsLocked(saved, () =>
            {
                parent.SetChildren([.. parent.Children.Where(e => !ReferenceEquals(e, edge))]);
                child.SetParents([.. child.Parents.Where(e => !ReferenceEquals(e, edge))]);
            });

            // A parent of a quiesced node is quiesced too, for as long as the child is.
            if (child.IsQuiesced)
            {
                parent.QuiesceBeginLocked();
            }

            return edge;
        }
    }

    /// <summary>
    /// Makes <paramref name="backing"/> the node's backing child, or leaves it without one (null), in one
    /// step: QEMU's bdrv_set_backing_hd. Only the graph changes; the image header keeps the name it has
    /// (a mirror target is created naming its future backing). The old backing closes if it was implicit
    /// and nothing else uses it.
    /// </summary>
    public void SetBacking(BlockNode node, BlockNode? backing)
    {
        if (!node.Driver.Capabilities.SupportsBacking)
        {
            throw new BlockGraphException(GraphErrorKind.Invalid, $"Driver '{node.Driver.DriverName}' of node '{node.Name}' does not support backing files");
        }

        List<BlockNode> orphans = [];
        lock (SyncRoot)
        {
            if (backing is not null && (ReferenceEquals(node, backing) || IsDescendantLocked(backing, node)))
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"making '{backing.Name}' the backing of '{node.Name}' would create a loop");
            }

            if (node.GetChild(ChildNames.Backing) is { } old)
            {
                DetachChildLocked(node, old, orphans);
            }
        }

        if (backing is not null)
        {
            AttachChild(node, ChildNames.Backing, backing, ChildRole.Cow);
        }

        BlockGraphLog.BackingChanged(Logger, node.Name, backing?.Name ?? "(none)");

        foreach (var orphan in orphans)
        {
            _ = CloseNodeAsync(orphan).AsTask();
        }
    }

    internal void DetachChild(BlockNode parent, NodeEdge edge)
    {
        List<BlockNode> orphans = [];
        lock (SyncRoot)
        {
            DetachChildLocked(parent, edge, orphans);
        }

        // Implicit children die with their last parent (QEMU's refcount); closing flushes, so it is
        // done outside the lock, in the background of the caller.
        foreach (var orphan in orphans)
        {
            _ = CloseNodeAsync(orphan).AsTask();
        }
    }

    void DetachChildLocked(BlockNode parent, NodeEdge edge, List<BlockNode> orphans)
    {
        if (!parent.Children.Contains(edge))
        {
            return;
        }

        var child = edge.Node;
        parent.SetChildren([.. parent.Children.Where(e => !ReferenceEquals(e, edge))]);
        child.SetParents([.. child.Parents.Where(e => !ReferenceEquals(e, edge))]);
        if (child.IsQuiesced)
        {
            parent.QuiesceEndLocked();
        }

        ReleasePermissionsLocked();
        CollectIfOrphanLocked(child, orphans);
    }

    void CollectIfOrphanLocked(BlockNode node, List<BlockNode> orphans)
    {
        if (node.IsAutoNamed && node.Parents.Count == 0 && _nodes.Remove(node.Name))
        {
            orphans.Add(node);
        }
    }

    static bool IsDescendantLocked(BlockNode node, BlockNode candidate)
    {
        foreach (var edge in node.Children)
        {
            if (ReferenceEquals(edge.Node, candidate) || IsDescendantLocked(edge.Node, candidate))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Attaches a root edge: a user of the node that honours drained sections, taking
    /// <paramref name="takes"/> and sharing <paramref name="shares"/>. Refused, with QEMU's message, when
    /// another user of the node does not share what this one takes, or takes what it does not share.
    /// </summary>
    public NodeEdge AttachRoot(BlockNode node, IEdgeParent parent, string name = "root",
        BlockPermissions takes = BlockPermissions.ConsistentRead, BlockPermissions shares = BlockPermissions.All)
    {
        NodeEdge edge;
        lock (SyncRoot)
        {
            edge = new NodeEdge(parent, name, node, ChildRole.Filtered, takes, shares);
            var saved = SavePermissionsLocked();
            node.SetParents([.. node.Parents, edge]);
            CommitPermissionsLocked(saved, () => node.SetParents([.. node.Parents.Where(e => !ReferenceEquals(e, edge))]));
            _roots.Add(edge);
            if (node.IsQuiesced)
            {
                edge.QuiesceBegin();
            }
        }

        BlockGraphLog.RootAttached(Logger, parent.ParentDescription, node.Name, name);
        return edge;
    }

    /// <summary>Detaches a root edge. An implicit node left without parents is closed.</summary>
    public async ValueTask DetachRootAsync(NodeEdge edge)
    {
        List<BlockNode> orphans = [];
        lock (SyncRoot)
        {
            if (!_roots.Remove(edge))
            {
                return;
            }

            var node = edge.Node;
            node.SetParents([.. node.Parents.Where(e => !ReferenceEquals(e, edge))]);
            if (node.IsQuiesced)
            {
                edge.QuiesceEnd();
            }

            ReleasePermissionsLocked();
            CollectIfOrphanLocked(node, orphans);
        }

        BlockGraphLog.RootDetached(Logger, edge.Parent.ParentDescription, edge.Node.Name);

        foreach (var orphan in orphans)
        {
            await CloseNodeAsync(orphan).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Begins a drained section on <paramref name="node"/>: every root edge that reaches it (directly or
    /// through parents) holds new requests, and this returns once no request is in flight on the node or
    /// any of its parents. Sections nest. Dispose the result to end the section.
    /// </summary>
    public async ValueTask<DrainedSection> DrainAsync(BlockNode node, CancellationToken cancellationToken = default)
    {
        lock (SyncRoot)
        {
            node.QuiesceBeginLocked();
        }

        var section = new DrainedSection(this, node);
        try
        {
            await WaitIdleAsync(node, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            section.Dispose();
            throw;
        }

        return section;
    }

    internal void EndDrain(BlockNode node)
    {
        lock (SyncRoot)
        {
            node.QuiesceEndLocked();
        }
    }

    /// <summary>
    /// Waits until the node and all its ancestors have nothing in flight at one moment. A request in flight
    /// in a parent may still send to the node (child edges never wait), so one pass is not enough: repeat
    /// until a whole pass finds everything idle. New root requests are held, so this terminates.
    /// </summary>
    static async Task WaitIdleAsync(BlockNode node, CancellationToken cancellationToken)
    {
        while (true)
        {
            var allIdle = true;
            foreach (var member in SelfAndAncestors(node))
            {
                if (member.InFlight.Count != 0)
                {
                    allIdle = false;
                    await member.InFlight.WaitIdleAsync(cancellationToken).ConfigureAwait(false);
                }
            }

            if (allIdle)
            {
                return;
            }
        }
    }

    static List<BlockNode> SelfAndAncestors(BlockNode node)
    {
        List<BlockNode> result = [node];
        for (var i = 0; i < result.Count; i++)
        {
            foreach (var edge in result[i].Parents)
            {
                if (edge.ParentNode is { } parent && !result.Contains(parent))
                {
                    result.Add(parent);
                }
            }
        }

        return result;
    }

    /// <summary>
    /// Switches a node, and the nodes under it that hold its data (its <c>file</c> child, a filter's child,
    /// recursively), between read-only and read-write without closing them (QEMU's
    /// bdrv_reopen_set_read_only), inside a drained section. Going read-write the file goes first, so the
    /// format can write into it; going read-only the format goes first, so it can write its metadata back
    /// before the file stops taking writes. A driver that cannot do it refuses with ENOTSUP, and nodes
    /// already switched are switched back.
    /// </summary>
    public async ValueTask ReopenAsync(BlockNode node, bool readOnly, CancellationToken cancellationToken = default)
    {
        List<BlockNode> stack = [];
        for (var n = node; n is not null; n = n.File?.Node ?? n.FilteredChild?.Node)
        {
            stack.Add(n);
        }

        if (!readOnly)
        {
            stack.Reverse();
        }

        using var section = await DrainAsync(node, cancellationToken).ConfigureAwait(false);
        List<BlockNode> changed = [];
        try
        {
            foreach (var member in stack)
            {
                if (member.ReadOnly == readOnly)
                {
                    continue;
                }

                if (member.Driver is not IReopenableDriver reopenable)
                {
                    throw BlockIOException.Create(BlockErrno.ENOTSUP, member.Name, BlockOperation.Write, 0, 0,
                        $"driver '{member.Driver.DriverName}' cannot be reopened {(readOnly ? "read-only" : "read-write")}");
                }

                await reopenable.ReopenAsync(readOnly, cancellationToken).ConfigureAwait(false);
                member.ReadOnly = readOnly;
                changed.Add(member);
            }

            // A format going read-write now writes its file: take that (and its locks), or undo.
            lock (SyncRoot)
            {
                CommitPermissionsLocked(SavePermissionsLocked(), static () => { });
            }

            foreach (var member in changed)
            {
                BlockGraphLog.NodeReopened(Logger, member.Name, readOnly ? "read-only" : "read-write");
            }
        }
        catch
        {
            changed.Reverse();
            foreach (var member in changed)
            {
                try
                {
                    await ((IReopenableDriver)member.Driver).ReopenAsync(!readOnly, CancellationToken.None).ConfigureAwait(false);
                    member.ReadOnly = !readOnly;
                }
                catch (IOException)
                {
                    // Leave it as it is now: its flag says so.
                }
            }

            lock (SyncRoot)
            {
                ReleasePermissionsLocked();
            }

            throw;
        }
    }

    /// <summary>
    /// Points every parent edge of <paramref name="from"/> at <paramref name="to"/> at once, except edges
    /// whose parent is <paramref name="to"/> or lies below it (moving those would make a loop: this is how
    /// a filter inserted above a node keeps its own child). Call inside a drained section of
    /// <paramref name="from"/>, so that nothing is in flight while edges move.
    /// </summary>
    public void ReplaceNode(BlockNode from, BlockNode to)
    {
        if (ReferenceEquals(from, to))
        {
            return;
        }

        lock (SyncRoot)
        {
            var saved = SavePermissionsLocked();
            List<NodeEdge> moved = [];
            foreach (var edge in from.Parents)
            {
                if (edge.ParentNode is { } parent && (ReferenceEquals(parent, to) || IsDescendantLocked(to, parent)))
                {
                    continue;
                }

                MoveEdgeLocked(edge, to);
                moved.Add(edge);
            }

            // The users must all be allowed on the new node, or none moves.
            CommitPermissionsLocked(saved, () =>
            {
                foreach (var edge in moved)
                {
                    MoveEdgeLocked(edge, from);
                }
            });
        }

        BlockGraphLog.NodeReplaced(Logger, from.Name, to.Name);
    }

    /// <summary>Points one edge at another node (QEMU's bdrv_replace_child). Inside a drained section.</summary>
    public void ReplaceChild(NodeEdge edge, BlockNode to)
    {
        BlockNode from;
        lock (SyncRoot)
        {
            if (edge.ParentNode is { } parent && (ReferenceEquals(parent, to) || IsDescendantLocked(to, parent)))
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"making '{to.Name}' the '{edge.Name}' child of '{parent.Name}' would create a loop");
            }

            from = edge.Node;
            var saved = SavePermissionsLocked();
            MoveEdgeLocked(edge, to);
            CommitPermissionsLocked(saved, () => MoveEdgeLocked(edge, from));
        }

        BlockGraphLog.ChildReplaced(Logger, edge.Name, edge.Parent.ParentDescription, from.Name, to.Name);
    }

    void MoveEdgeLocked(NodeEdge edge, BlockNode to)
    {
        var from = edge.Node;
        if (ReferenceEquals(from, to))
        {
            return;
        }

        from.SetParents([.. from.Parents.Where(e => !ReferenceEquals(e, edge))]);
        to.SetParents([.. to.Parents, edge]);
        edge.Retarget(to);

        // The parent follows the quiesce state of its new child. Begin before end, so a parent that
        // stays quiesced is never let go in between.
        if (to.IsQuiesced)
        {
            BlockNode.QuiesceParentLocked(edge);
        }

        if (from.IsQuiesced)
        {
            BlockNode.UnquiesceParentLocked(edge);
        }
    }

    /// <summary>
    /// Removes a node that nothing uses any more (QEMU's blockdev-del): closes its driver, which flushes,
    /// and releases its children; implicit children left without parents go too.
    /// </summary>
    public async ValueTask RemoveNodeAsync(BlockNode node)
    {
        lock (SyncRoot)
        {
            if (node.Parents.Count > 0)
            {
                throw new BlockGraphException(GraphErrorKind.InUse,
                    $"Node '{node.Name}' is busy: used by {string.Join(", ", node.Parents.Select(e => e.Parent.ParentDescription))}");
            }

            if (!_nodes.Remove(node.Name))
            {
                return;
            }
        }

        await CloseNodeAsync(node).ConfigureAwait(false);
    }

    /// <summary>Closes a node already taken out of the name table: its driver first, then its children.</summary>
    async ValueTask CloseNodeAsync(BlockNode node)
    {
        if (node.Closed)
        {
            return;
        }

        node.Closed = true;

        // A close that fails (a flush error) must not leave the children open: close them anyway and
        // report the failure afterwards.
        Exception? failure = null;
        if (node.DriverOrNull is { } driver)
        {
            try
            {
                await driver.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                failure = ex;
            }
        }

        List<BlockNode> orphans = [];
        lock (SyncRoot)
        {
            foreach (var edge in node.Children)
            {
                DetachChildLocked(node, edge, orphans);
            }
        }

        foreach (var orphan in orphans)
        {
            await CloseNodeAsync(orphan).ConfigureAwait(false);
        }

        if (failure is not null)
        {
            BlockGraphLog.NodeCloseFailed(Logger, node.Name, failure.Message);
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }

        BlockGraphLog.NodeRemoved(Logger, node.Name);
    }

    /// <summary>Closes every node, parents before children, so formats flush into their files.</summary>
    public async ValueTask DisposeAsync()
    {
        List<NodeEdge> roots;
        lock (SyncRoot)
        {
            roots = [.. _roots];
        }

        foreach (var root in roots)
        {
            await DetachRootAsync(root).ConfigureAwait(false);
        }

        while (true)
        {
            BlockNode? top;
            lock (SyncRoot)
            {
                top = _nodes.Values.FirstOrDefault(n => n.Parents.Count == 0);
                if (top is null)
                {
                    if (_nodes.Count == 0)
                    {
                        return;
                    }

                    // Only possible with a root edge left attached by a broken caller; close anyway.
                    top = _nodes.Values.First();
                }

                _nodes.Remove(top.Name);
            }

            await CloseNodeAsync(top).ConfigureAwait(false);
        }
    }
}
