using BlockMirror.Block.Drivers;

namespace BlockMirror.Block.Graph;

/// <summary>
/// The permission model (QEMU's): every edge says what its parent takes and what it shares; a node's use is
/// the union of what its parents take and the intersection of what they share. A graph change that would
/// let one parent take what another does not share is refused and undone; drivers that hold locks
/// (<see cref="IPermissionAwareDriver"/>) follow every change.
/// </summary>
/// <remarks>
/// All of it runs under <see cref="SyncRoot"/> at graph changes, never per request. The whole graph is
/// recomputed each time: graphs have a handful of nodes, and one pass cannot miss a node reached twice.
/// </remarks>
public sealed partial class BlockGraph
{
    /// <summary>
    /// Changes what a user takes and shares on its node (QEMU's blk_set_perm), e.g. a job that lets go of
    /// its target before a pivot. Refused, and nothing changes, when another user does not allow it.
    /// </summary>
    public void SetPermissions(NodeEdge edge, BlockPermissions takes, BlockPermissions shares)
    {
        lock (SyncRoot)
        {
            var saved = SavePermissionsLocked();
            edge.Permissions = takes;
            edge.SharedPermissions = shares;
            CommitPermissionsLocked(saved, static () => { });
        }
    }

    /// <summary>What the node's parents take together, and what they all share.</summary>
    public static (BlockPermissions Takes, BlockPermissions Shares) CumulativePermissions(BlockNode node)
    {
        var takes = BlockPermissions.None;
        var shares = BlockPermissions.All;
        foreach (var edge in node.Parents)
        {
            takes |= edge.Permissions;
            shares &= edge.SharedPermissions;
        }

        return (takes, shares);
    }

    Dictionary<NodeEdge, (BlockPermissions Takes, BlockPermissions Shares)> SavePermissionsLocked()
    {
        Dictionary<NodeEdge, (BlockPermissions, BlockPermissions)> saved = [];
        foreach (var node in _nodes.Values)
        {
            foreach (var edge in node.Parents)
            {
                saved[edge] = (edge.Permissions, edge.SharedPermissions);
            }
        }

        return saved;
    }

    /// <summary>
    /// After a topology or permission change: recomputes, checks and locks. When refused, <paramref name="undo"/>
    /// puts the topology back, the saved permissions return, the locks follow them, and the refusal is thrown.
    /// </summary>
    void CommitPermissionsLocked(Dictionary<NodeEdge, (BlockPermissions Takes, BlockPermissions Shares)> saved, Action undo)
    {
        try
        {
            RefreshPermissionsLocked();
        }
        catch (BlockGraphException)
        {
            undo();
            foreach (var (edge, (takes, shares)) in saved)
            {
                edge.Permissions = takes;
                edge.SharedPermissions = shares;
            }

            ApplyDriverPermissionsLocked(ignoreErrors: true);
            throw;
        }
    }

    /// <summary>After a change that only lets go (a detach): nothing can be refused, so nothing is undone.</summary>
    void ReleasePermissionsLocked()
    {
        try
        {
            RefreshPermissionsLocked();
        }
        catch (BlockGraphException)
        {
            // Letting go never conflicts; a lock byte that could not be dropped goes with the descriptor.
        }
    }

    void RefreshPermissionsLocked()
    {
        foreach (var node in _nodes.Values)
        {
            if (!node.Parents.Any(e => e.ParentNode is not null))
            {
                PropagateLocked(node);
            }
        }

        foreach (var node in _nodes.Values)
        {
            CheckConflictsLocked(node);
        }

        ApplyDriverPermissionsLocked(ignoreErrors: false);
    }

    /// <summary>Sets the permissions of the node's child edges from the node's use, down to the leaves.</summary>
    static void PropagateLocked(BlockNode node)
    {
        var (takes, shares) = CumulativePermissions(node);
        foreach (var edge in node.Children)
        {
            (edge.Permissions, edge.SharedPermissions) = Permissions.ForChild(edge.Role, !node.ReadOnly, takes, shares, edge.Node.ForceShare);
            PropagateLocked(edge.Node);
        }
    }

    /// <summary>Refuses a node one parent of which takes what another does not share, in QEMU 7.2's words (bdrv_a_allow_b).</summary>
    static void CheckConflictsLocked(BlockNode node)
    {
        // Newest parent first, as QEMU's list has them, so the message names the same two users.
        var parents = node.Parents;
        for (var i = parents.Count - 1; i >= 0; i--)
        {
            var a = parents[i];
            for (var j = parents.Count - 1; j >= 0; j--)
            {
                var b = parents[j];
                var denied = b.Permissions & ~a.SharedPermissions;
                if (ReferenceEquals(a, b) || denied == BlockPermissions.None)
                {
                    continue;
                }

                throw new BlockGraphException(GraphErrorKind.InUse,
                    $"Permission conflict on node '{node.Name}': permissions '{Permissions.Describe(denied)}' are both required by " +
                    $"{UserOf(b)} (uses node '{node.Name}' as '{RoleOf(b)}' child) and unshared by {UserOf(a)} (uses node '{node.Name}' as '{RoleOf(a)}' child).");
            }
        }
    }

    // QEMU's users that are not nodes (exports, jobs' block backends, tools) are unnamed block devices on a 'root' child.
    static string UserOf(NodeEdge edge) => edge.ParentNode is { } parent ? $"node '{parent.Name}'" : "an unnamed block device";

    static string RoleOf(NodeEdge edge) => edge.IsRoot ? "root" : edge.Name;

    void ApplyDriverPermissionsLocked(bool ignoreErrors)
    {
        foreach (var node in _nodes.Values)
        {
            if (node.DriverOrNull is not IPermissionAwareDriver aware || node.Closed)
            {
                continue;
            }

            var (takes, shares) = CumulativePermissions(node);
            try
            {
                aware.SetPermissions(takes, shares);
            }
            catch (BlockGraphException) when (ignoreErrors)
            {
            }
        }
    }
}
