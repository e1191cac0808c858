using System.Numerics;
using System.Text;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Qcow2;

// Persistent dirty bitmaps, as QEMU keeps them (qcow2-bitmap.c): loaded at open into dirty bitmaps of the node,
// marked in use on disk while the image is writable, stored back when it is closed or reopened read-only.
public sealed partial class Qcow2Driver : IPersistentBitmaps
{
    /// <summary>
    /// One persistent bitmap: its node bitmap (null when it has none: found in use at open with a granularity a node
    /// bitmap cannot have), the directory entry it was last stored as (null until first stored), and whether its
    /// data is untrusted (found in use at open: it is kept in the image as it is and never stored over).
    /// </summary>
    sealed class PersistentBitmap(string name, DirtyBitmap? bitmap, Qcow2BitmapEntry? stored, bool inconsistent)
    {
        public string Name { get; } = name;

        public DirtyBitmap? Bitmap { get; } = bitmap;

        public Qcow2BitmapEntry? Stored { get; set; } = stored;

        public bool Inconsistent { get; } = inconsistent;
    }

    // Changed by AddPersistentBitmap outside the metadata lock, so every access takes this one (never across an await).
    readonly List<PersistentBitmap> _persistent = [];
    readonly Lock _persistentLock = new();

    // The bitmaps as found at open (before a writable open marked them in use) with their data (null for one
    // found in use), for the node bitmaps made once the node exists.
    IReadOnlyList<(Qcow2BitmapEntry Entry, byte[]? Data)> _loadedBitmaps = [];

    public IReadOnlyList<PersistentBitmapInfo> StoredBitmaps => [.. _image.BitmapDirectory.Select(e => e.ToInfo())];

    public DirtyBitmap? FindPersistentBitmap(string name)
    {
        lock (_persistentLock)
        {
            return _persistent.Find(p => p.Name == name) is { Inconsistent: false, Bitmap: { } bitmap } ? bitmap : null;
        }
    }

    List<PersistentBitmap> PersistentSnapshot()
    {
        lock (_persistentLock)
        {
            return [.. _persistent];
        }
    }

    /// <summary>Reads the data of every bitmap not in use (QEMU loads them all at open, and refuses the image when one cannot be read).</summary>
    static async ValueTask<IReadOnlyList<(Qcow2BitmapEntry, byte[]?)>> LoadBitmapsAsync(Qcow2Image image, CancellationToken cancellationToken)
    {
        var loaded = new List<(Qcow2BitmapEntry, byte[]?)>();
        foreach (var entry in image.BitmapDirectory)
        {
            loaded.Add((entry, entry.InUse ? null : await image.ReadBitmapDataAsync(entry, cancellationToken).ConfigureAwait(false)));
        }

        return loaded;
    }

    /// <summary>Makes the node bitmaps of the loaded persistent bitmaps, once the node exists; enabled where the image says auto.</summary>
    void AttachPersistentBitmaps()
    {
        foreach (var (entry, data) in _loadedBitmaps)
        {
            DirtyBitmap? bitmap = null;
            if (DirtyBitmap.ValidateGranularity(entry.Granularity) is null)
            {
                bitmap = _node.CreateDirtyBitmap(entry.Granularity, entry.Name);
                bitmap.Enabled = entry.Auto && !entry.InUse;
                bitmap.Inconsistent = entry.InUse;
                if (data is not null)
                {
                    Qcow2BitmapTable.Deserialize(data, bitmap);
                }
            }

            // A granularity past what a node bitmap takes (QEMU allows up to 2 GiB): no node bitmap, so the image
            // keeps the entry as it is; opened for writing it was marked in use, and stays so, as it is not tracked.
            var stored = _image.BitmapDirectory.FirstOrDefault(e => e.Name == entry.Name);
            lock (_persistentLock)
            {
                _persistent.Add(new PersistentBitmap(entry.Name, bitmap, stored, entry.InUse));
            }
        }

        _loadedBitmaps = [];
    }

    /// <summary>
    /// QEMU's qcow2_truncate_bitmaps_check: the node bitmaps follow a resize, so every persistent bitmap must be one
    /// loaded and trusted; null when they all are.
    /// </summary>
    string? BitmapResizeRefusal() => PersistentSnapshot().Find(p => p.Inconsistent || p.Bitmap is null) switch
    {
        null => null,
        { Inconsistent: true } p => $"Bitmap '{p.Name}' is inconsistent and cannot be used",
        _ => "Cannot resize qcow2 with persistent bitmaps that were not loaded into memory",
    };

    public DirtyBitmap AddPersistentBitmap(string name, long granularity, bool disabled)
    {
        lock (_persistentLock)
        {
            // A stored bitmap without a node bitmap (a granularity too large for one) holds its name too.
            if (_node.DirtyBitmaps.Any(b => b.Name == name) || _persistent.Exists(p => p.Name == name))
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"Bitmap already exists: {name}");
            }

            if (CannotStore(name, granularity) is { } reason)
            {
                throw new BlockGraphException(GraphErrorKind.Invalid, $"Can't make bitmap '{name}' persistent in '{_node.Name}': {reason}");
            }

            var bitmap = _node.CreateDirtyBitmap(granularity, name);
            bitmap.Enabled = !disabled;
            _persistent.Add(new PersistentBitmap(name, bitmap, null, inconsistent: false));
            return bitmap;
        }
    }

    /// <summary>
    /// QEMU's qcow2_co_can_store_new_dirty_bitmap and check_constraints_on_bitmap: why a new bitmap could not be
    /// stored, or null. The caller holds <see cref="_persistentLock"/>.
    /// </summary>
    string? CannotStore(string name, long granularity)
    {
        if (_image.Header.Version < 3)
        {
            return "Cannot store dirty bitmaps in qcow2 v2 files";
        }

        if (!_image.Writable)
        {
            return "the image is open read-only";
        }

        if (DirtyBitmap.ValidateGranularity(granularity) is { } problem)
        {
            return problem;
        }

        var bits = BitOperations.Log2((ulong)granularity);
        if (bits > Qcow2BitmapDirectory.MaxGranularityBits)
        {
            return $"Granularity exceeds maximum ({1L << Qcow2BitmapDirectory.MaxGranularityBits} bytes)";
        }

        if (bits < Qcow2BitmapDirectory.MinGranularityBits)
        {
            return $"Granularity is under minimum ({1L << Qcow2BitmapDirectory.MinGranularityBits} bytes)";
        }

        var dataBytes = (ulong)Qcow2BitmapTable.DataBytes(Length, bits);
        if (dataBytes > Qcow2BitmapDirectory.MaxBitmapBytes || dataBytes > (ulong)Qcow2BitmapDirectory.MaxTableEntries * (ulong)_image.Geometry.ClusterSize)
        {
            return "Too much space will be occupied by the bitmap. Use larger granularity";
        }

        if (Encoding.UTF8.GetByteCount(name) > Qcow2BitmapDirectory.MaxNameLength)
        {
            return $"Name length exceeds maximum ({Qcow2BitmapDirectory.MaxNameLength} characters)";
        }

        if (_persistent.Count + 1 > Qcow2Header.MaxBitmaps)
        {
            return "Maximum number of persistent bitmaps is already reached";
        }

        var directorySize = _persistent.Sum(p => (long)Qcow2BitmapDirectory.EntrySize(p.Name)) + Qcow2BitmapDirectory.EntrySize(name);
        return directorySize > Qcow2Header.MaxBitmapDirectoryBytes ? "Not enough space in the bitmap directory" : null;
    }

    public async ValueTask<bool> RemovePersistentBitmapAsync(string name, CancellationToken cancellationToken = default)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var bitmap = PersistentSnapshot().Find(p => p.Name == name);
            if (bitmap is null)
            {
                return false;
            }

            if (!_image.Writable || _writeRefusal is not null)
            {
                // QEMU's words for a bitmap of an image it may not write (BDRV_BITMAP_READONLY).
                throw new BlockGraphException(GraphErrorKind.Invalid, $"Bitmap '{name}' is readonly and cannot be modified");
            }

            if (bitmap.Stored is { } stored)
            {
                // QEMU's qcow2_co_remove_persistent_dirty_bitmap: the image drops it now, not at close.
                var rest = _image.BitmapDirectory.Where(e => e.TableOffset != stored.TableOffset)
                    .Select(e => new Qcow2Image.BitmapToStore(e, null)).ToList();
                await _image.StoreBitmapsAsync(rest, cancellationToken).ConfigureAwait(false);
            }

            lock (_persistentLock)
            {
                _persistent.Remove(bitmap);
            }

            if (bitmap.Bitmap is { } dirty)
            {
                _node.ReleaseDirtyBitmap(dirty);
            }

            return true;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// Stores every usable persistent bitmap (QEMU's qcow2_store_persistent_dirty_bitmaps), with the auto flag
    /// where it is enabled and without the in-use flag; those found in use at open stay in the image as they are.
    /// Nothing is written when no bitmap is usable, nor to an image that refuses writes. The caller holds the metadata lock.
    /// </summary>
    async ValueTask StorePersistentBitmapsLockedAsync(CancellationToken cancellationToken)
    {
        var persistent = PersistentSnapshot();
        if (!_image.Writable || _image.Corrupt || _writeRefusal is not null || !persistent.Exists(p => p is { Inconsistent: false, Bitmap: not null }))
        {
            return;
        }

        var set = new List<Qcow2Image.BitmapToStore>(persistent.Count);
        foreach (var p in persistent)
        {
            if (p is { Inconsistent: false, Bitmap: { } bitmap })
            {
                var flags = bitmap.Enabled ? Qcow2BitmapEntry.FlagAuto : 0;
                var entry = new Qcow2BitmapEntry(p.Name, 0, 0, flags, BitOperations.Log2((ulong)bitmap.Granularity));
                set.Add(new Qcow2Image.BitmapToStore(entry, Qcow2BitmapTable.Serialize(bitmap)));
            }
            else if (p.Stored is { } stored)
            {
                set.Add(new Qcow2Image.BitmapToStore(stored, null));
            }
        }

        await _image.StoreBitmapsAsync(set, cancellationToken).ConfigureAwait(false);
        var directory = _image.BitmapDirectory;
        foreach (var p in persistent)
        {
            p.Stored = directory.FirstOrDefault(e => e.Name == p.Name);
        }
    }
}
