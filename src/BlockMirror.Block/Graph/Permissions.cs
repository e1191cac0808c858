namespace BlockMirror.Block.Graph;

/// <summary>
/// What a parent does with a node, or lets others do (QEMU 7.2's BLK_PERM_*; 7.2 has no GRAPH_MOD any
/// more). The bit values are QEMU's: the file driver's lock bytes are numbered by them.
/// </summary>
[Flags]
public enum BlockPermissions
{
    None = 0,

    /// <summary>Reads return what was written (no other writer may make them inconsistent).</summary>
    ConsistentRead = 0x01,

    /// <summary>Writes that change the data.</summary>
    Write = 0x02,

    /// <summary>Writes that leave the data as it reads (a copy-on-read, a mirror writing what is there).</summary>
    WriteUnchanged = 0x04,

    /// <summary>Changing the length.</summary>
    Resize = 0x08,

    All = ConsistentRead | Write | WriteUnchanged | Resize,
}

/// <summary>How a parent node uses a child, which decides the permissions it takes on it (QEMU's BdrvChildRole).</summary>
public enum ChildRole
{
    /// <summary>The edge passes its parent's use through unchanged (a filter's child, raw's file).</summary>
    Filtered,

    /// <summary>A format's own file: metadata and data (QEMU's bdrv_default_perms_for_storage).</summary>
    Storage,

    /// <summary>A backing file read for copy-on-write (QEMU's bdrv_default_perms_for_cow).</summary>
    Cow,
}

/// <summary>Permission names and the permissions a child edge takes, by its role.</summary>
public static class Permissions
{
    static readonly (BlockPermissions Bit, string Name)[] Names =
    [
        (BlockPermissions.ConsistentRead, "consistent read"),
        (BlockPermissions.Write, "write"),
        (BlockPermissions.WriteUnchanged, "write unchanged"),
        (BlockPermissions.Resize, "resize"),
    ];

    /// <summary>Each bit with its QEMU name, in bit order (the lock bytes are numbered by position).</summary>
    public static IReadOnlyList<(BlockPermissions Bit, string Name)> Bits => Names;

    /// <summary>QEMU's bdrv_perm_names: the names joined by ", ".</summary>
    public static string Describe(BlockPermissions permissions) =>
        string.Join(", ", Names.Where(n => (permissions & n.Bit) != 0).Select(n => n.Name));

    /// <summary>
    /// The role of a child attached without one: a <c>backing</c> child is read for copy-on-write; any other
    /// passes its parent's use through (filters and raw name theirs <c>file</c> too, so a format that keeps
    /// metadata in its file says <see cref="ChildRole.Storage"/> itself).
    /// </summary>
    public static ChildRole RoleOf(string childName) => childName == ChildNames.Backing ? ChildRole.Cow : ChildRole.Filtered;

    /// <summary>
    /// What a child edge takes and shares, given what the parent node's own parents take and share
    /// (its cumulative use) and whether the parent may write.
    /// </summary>
    internal static (BlockPermissions Take, BlockPermissions Share) ForChild(ChildRole role, bool parentWritable,
        BlockPermissions parentTakes, BlockPermissions parentShares, bool childForceShare)
    {
        var take = parentTakes;
        var share = parentShares;
        switch (role)
        {
            case ChildRole.Storage:
                // A format writes its metadata whenever it is writable, even with no writer above, and
                // may grow its file; it reads metadata always. Nobody else may write or resize under it.
                if (parentWritable)
                {
                    take |= BlockPermissions.Write | BlockPermissions.Resize;
                }

                take |= BlockPermissions.ConsistentRead;
                share &= ~(BlockPermissions.Write | BlockPermissions.Resize);
                break;
            case ChildRole.Cow:
                // Only reads go to a backing file; it may change under us only if the parent accepts
                // changing data.
                take &= BlockPermissions.ConsistentRead;
                share = ((share & BlockPermissions.Write) != 0 ? BlockPermissions.Write | BlockPermissions.Resize : BlockPermissions.None)
                    | BlockPermissions.ConsistentRead | BlockPermissions.WriteUnchanged;
                break;
        }

        // qemu-img's -U (force-share) on the child: it puts up with anything.
        return (take, childForceShare ? BlockPermissions.All : share);
    }
}
