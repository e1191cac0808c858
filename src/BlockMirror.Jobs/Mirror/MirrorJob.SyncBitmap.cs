using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// <c>sync=bitmap</c>, the incremental re-sync Proxmox carries downstream (John Snow's series): the job's
/// initial dirty set is a named bitmap of the source, and at the end <c>bitmap-mode</c> says what that bitmap
/// keeps. The target must already equal the source as of when the bitmap started recording (the user's word,
/// as in Proxmox): only the marked chunks are copied.
/// </summary>
public sealed partial class MirrorJob
{
    /// <summary>
    /// The checks Proxmox's blockdev_mirror_common and mirror_start_job make, in their order and words, then
    /// ours on the target's clusters. Returns the bitmap a <c>sync=bitmap</c> job uses, or null for other modes.
    /// </summary>
    static DirtyBitmap? CheckSyncBitmap(BlockNode source, BlockNode target, MirrorOptions options)
    {
        DirtyBitmap? bitmap = null;
        if (options.Bitmap is { } name)
        {
            if (options.Granularity != 0)
            {
                throw new JobException("Granularity and bitmap cannot both be set");
            }

            if (options.BitmapMode is null)
            {
                throw new JobException("bitmap-mode must be specified if a bitmap is provided");
            }

            bitmap = source.DirtyBitmaps.FirstOrDefault(b => b.Name == name) ?? throw new JobException($"Dirty bitmap '{name}' not found");
            CheckUsable(source, bitmap);
        }
        else if (options.BitmapMode is not null)
        {
            throw new JobException("Cannot specify bitmap sync mode without a bitmap");
        }

        if (options.Sync == MirrorSyncMode.Bitmap && bitmap is null)
        {
            throw new JobException("Must provide a valid bitmap name for 'bitmap' sync mode");
        }

        if (options.Sync != MirrorSyncMode.Bitmap && bitmap is not null)
        {
            throw new JobException($"sync mode '{options.Sync.ToWireName()}' is not compatible with bitmaps");
        }

        if (bitmap is null)
        {
            return null;
        }

        if (options.BitmapMode != BitmapSyncMode.Never && source.ReadOnly)
        {
            // The job would change the bitmap at its end (QEMU's BDRV_BITMAP_DEFAULT check).
            throw new JobException($"Bitmap '{bitmap.Name}' is readonly and cannot be modified");
        }

        // The pitfall QEMU's reviewers found: a copy of one chunk is a write of part of a target cluster, and a
        // target that allocates that cluster fills the rest from its backing (or with zeroes where its backing is
        // opened only at the switch), not with what the target held: bytes the bitmap says are in sync go stale.
        var cluster = target.Limits.ClusterSize;
        if (cluster > bitmap.Granularity)
        {
            throw new JobException($"Cannot use bitmap '{bitmap.Name}' for a mirror onto '{target.Name}': its granularity ({bitmap.Granularity} bytes) " +
                $"is smaller than the target's cluster size ({cluster} bytes), so a copy would rewrite part of a target cluster and could " +
                "leave the rest of it reading stale data; use a bitmap whose granularity is at least the target's cluster size");
        }

        return bitmap;
    }

    /// <summary>QEMU's bdrv_dirty_bitmap_check (BDRV_BITMAP_ALLOW_RO): not busy, not inconsistent.</summary>
    static void CheckUsable(BlockNode source, DirtyBitmap bitmap)
    {
        if (bitmap.Busy)
        {
            throw new JobException($"Bitmap '{bitmap.Name}' is currently in use by another operation and cannot be used");
        }

        // A persistent bitmap found in use at open has a node bitmap but no trusted data.
        if (BlockChain.SkipFilters(source).Driver is IPersistentBitmaps persistent && persistent.FindPersistentBitmap(bitmap.Name!) is null &&
            persistent.StoredBitmaps.Any(b => b.Name == bitmap.Name))
        {
            throw new JobException($"Bitmap '{bitmap.Name}' is inconsistent and cannot be used");
        }
    }

    /// <summary>Every chunk <paramref name="from"/> marks becomes dirty in <paramref name="into"/> (the same granularity or a finer one).</summary>
    static void MergeInto(DirtyBitmap into, DirtyBitmap from)
    {
        foreach (var area in from.EnumerateDirtyAreas())
        {
            into.SetDirty(area.Offset, area.Length);
        }
    }

    /// <summary>
    /// The end of a <c>sync=bitmap</c> job (Proxmox's mirror_exit_common): with <c>always</c>, or <c>on-success</c> on
    /// success, the user's bitmap is cleared and given what the job left dirty (nothing, once completed), so that it
    /// marks exactly what the target still lacks; with <c>never</c> it keeps its bits. It is no longer busy.
    /// </summary>
    void EndSyncBitmap(bool success)
    {
        if (_syncBitmap is not { } bitmap)
        {
            return;
        }

        if (_options.BitmapMode == BitmapSyncMode.Always || (_options.BitmapMode == BitmapSyncMode.OnSuccess && success))
        {
            bitmap.Clear();
            MergeInto(bitmap, _dirty);
        }

        bitmap.Busy = false;
    }
}
