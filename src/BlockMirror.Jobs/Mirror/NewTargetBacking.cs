using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// What a mirror's newly created target must be backed by so that it reads what the source reads
/// (QEMU's qmp_drive_mirror): with <c>sync=top</c> the source's backing image (the job copies only what
/// lies above it), with <c>sync=none</c> the source itself (the job copies only new writes), with
/// <c>sync=full</c> nothing. <c>top</c> over a source without a backing image is <c>full</c>. Shared by
/// drive-mirror and <c>blockmirror mirror</c>, so both make the same target.
/// </summary>
public static class NewTargetBacking
{
    /// <summary>The sync mode the job really runs, and the image (filters passed over) the new target names, or null.</summary>
    public static (MirrorSyncMode Sync, BlockNode? Backing) Choose(BlockNode source, MirrorSyncMode sync)
    {
        var image = BlockChain.SkipFilters(source);
        return sync switch
        {
            MirrorSyncMode.Top when image.Backing is { } backing => (sync, BlockChain.SkipFilters(backing)),
            MirrorSyncMode.Top => (MirrorSyncMode.Full, null),
            MirrorSyncMode.None => (sync, image),
            _ => (sync, null),
        };
    }
}
