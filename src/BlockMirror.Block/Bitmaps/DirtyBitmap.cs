using System.Numerics;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Bitmaps;

/// <summary>
/// Dirty tracking for one user of one node: a byte-addressed view of an <see cref="HBitmap"/>, one bit per
/// <see cref="Granularity"/> bytes, safe against concurrent writers.
/// </summary>
/// <remarks>
/// Setting marks every chunk the range touches (a partial chunk is dirty). Resetting clears only the
/// chunks the range covers completely (plus a partial last chunk at the device end), so a reset never
/// forgets bytes it was not asked to forget. Every operation takes one short lock; none blocks on I/O.
/// </remarks>
public sealed class DirtyBitmap
{
    public const long MinGranularity = 512;

    /// <summary>The largest granularity a mirror's bitmap takes (QEMU's mirror limit).</summary>
    public const long MaxGranularity = 64L << 20;

    /// <summary>The largest granularity any bitmap takes: QEMU's are uint32 powers of two (block-dirty-bitmap-add, qcow2's bitmaps).</summary>
    public const long MaxBitmapGranularity = 1L << 31;

    readonly Lock _lock = new();
    readonly HBitmap _bits;
    readonly int _shift;
    long _length;
    long _newlyDirtied;
    volatile bool _enabled = true;
    volatile bool _busy;

    /// <summary>Creates a bitmap not attached to a node (for tests and for the mirror's own in-flight map).</summary>
    public DirtyBitmap(long granularity, long length)
        : this(null, null, granularity, length)
    {
    }

    internal DirtyBitmap(BlockNode? node, string? name, long granularity, long length)
    {
        if (ValidateGranularity(granularity, MaxBitmapGranularity) is { } problem)
        {
            throw new ArgumentOutOfRangeException(nameof(granularity), granularity, problem);
        }

        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Node = node;
        Name = name;
        Granularity = granularity;
        _shift = BitOperations.Log2((ulong)granularity);
        _length = length;
        _bits = new HBitmap(ChunkCount(length));
    }

    /// <summary>Null when the granularity is valid for a bitmap of at most <paramref name="max"/> (a mirror's by default), else the reason.</summary>
    public static string? ValidateGranularity(long granularity, long max = MaxGranularity) =>
        granularity < MinGranularity || granularity > max
            ? $"granularity must be between {MinGranularity} and {max} bytes, got {granularity}"
            : !BitOperations.IsPow2(granularity)
                ? $"granularity must be a power of 2, got {granularity}"
                : null;

    public BlockNode? Node { get; }

    public string? Name { get; }

    /// <summary>
    /// In use by an operation (QEMU's busy bitmap: an export serving it, a job working from it): the monitor may
    /// not change, merge from or remove it. Set and cleared by that operation.
    /// </summary>
    public bool Busy
    {
        get => _busy;
        set => _busy = value;
    }

    /// <summary>Stored in the node's image (set by a format that keeps bitmaps, <see cref="Drivers.IPersistentBitmaps"/>).</summary>
    public bool Persistent { get; internal set; }

    /// <summary>
    /// Persistent, but found in use in the image (its process ended without storing it): its bits are not trusted,
    /// it never records, and the only thing the monitor may do with it is remove it.
    /// </summary>
    public bool Inconsistent { get; internal set; }

    /// <summary>A persistent bitmap of a read-only node: its image cannot be written, so neither may it be (QEMU's readonly bitmap).</summary>
    public bool ReadOnly => Persistent && Node is { ReadOnly: true };

    /// <summary>Bytes per bit.</summary>
    public long Granularity { get; }

    /// <summary>Length of the tracked device in bytes.</summary>
    public long Length
    {
        get
        {
            lock (_lock)
            {
                return _length;
            }
        }
    }

    /// <summary>A disabled bitmap is not marked by writes (QEMU's block-dirty-bitmap-disable).</summary>
    public bool Enabled
    {
        get => _enabled;
        set => _enabled = value;
    }

    /// <summary>Dirty bytes, exact: a dirty last chunk counts only up to the device end. O(1).</summary>
    public long DirtyBytes
    {
        get
        {
            lock (_lock)
            {
                var bytes = _bits.Count << _shift;
                var overhang = (_bits.Size << _shift) - _length;
                if (overhang > 0 && _bits.Get(_bits.Size - 1))
                {
                    bytes -= overhang;
                }

                return bytes;
            }
        }
    }

    /// <summary>Dirty chunks times the granularity: QEMU's <c>count</c>, where a dirty last chunk counts whole. O(1).</summary>
    public long DirtyChunkBytes
    {
        get
        {
            lock (_lock)
            {
                return _bits.Count << _shift;
            }
        }
    }

    /// <summary>
    /// QEMU's bdrv_get_default_bitmap_granularity: a node's cluster size (0 when it has none) clamped to 4 KiB..64 KiB,
    /// 64 KiB when it has none.
    /// </summary>
    public static long DefaultGranularity(long clusterSize) => clusterSize <= 0 ? 64 << 10 : Math.Clamp(clusterSize, 4 << 10, 64 << 10);

    /// <summary>
    /// Marks every byte <paramref name="source"/> marks (any granularity; a partial chunk of this bitmap becomes
    /// dirty). Reads the source one area at a time, so writers of either bitmap are not held up.
    /// </summary>
    public void Merge(DirtyBitmap source)
    {
        foreach (var area in source.EnumerateDirtyAreas())
        {
            SetDirty(area.Offset, area.Length);
        }
    }

    /// <summary>A copy of the bits as they are now, attached to no node (what a transaction restores on abort).</summary>
    public DirtyBitmap Snapshot()
    {
        var copy = new DirtyBitmap(Granularity, Length);
        copy.Merge(this);
        return copy;
    }

    /// <summary>Makes the bits those of <paramref name="snapshot"/> (same granularity and length), dropping any set since.</summary>
    public void Restore(DirtyBitmap snapshot)
    {
        Clear();
        Merge(snapshot);
    }

    /// <summary>
    /// Bytes whose chunks <see cref="SetDirty"/> found clean and marked, ever (whole chunks; a chunk marked
    /// again while still dirty does not count). Its growth over time is the rate at which work to copy
    /// appears, which a mirror sets against its copy rate to tell whether it converges. O(1), no allocation.
    /// </summary>
    public long NewlyDirtiedBytes
    {
        get
        {
            lock (_lock)
            {
                return _newlyDirtied;
            }
        }
    }

    long ChunkCount(long length) => (length + Granularity - 1) >> _shift;

    /// <summary>Marks every chunk that [offset, offset + length) touches.</summary>
    public void SetDirty(long offset, long length)
    {
        if (length <= 0)
        {
            return;
        }

        var first = offset >> _shift;
        var last = (offset + length - 1) >> _shift;
        lock (_lock)
        {
            var before = _bits.Count;
            _bits.Set(first, last - first + 1);
            _newlyDirtied += (_bits.Count - before) << _shift;
        }
    }

    /// <summary>Clears the chunks that [offset, offset + length) covers completely (the device end counts as a chunk end).</summary>
    public void ResetDirty(long offset, long length)
    {
        if (length <= 0)
        {
            return;
        }

        lock (_lock)
        {
            var first = (offset + Granularity - 1) >> _shift;
            var end = offset + length;
            var endChunk = end >= _length ? _bits.Size : end >> _shift;
            if (endChunk > first)
            {
                _bits.Reset(first, endChunk - first);
            }
        }
    }

    public void SetAll()
    {
        lock (_lock)
        {
            _bits.SetAll();
        }
    }

    public void Clear()
    {
        lock (_lock)
        {
            _bits.ResetAll();
        }
    }

    /// <summary>True when the chunk holding <paramref name="offset"/> is dirty.</summary>
    public bool IsDirty(long offset)
    {
        lock (_lock)
        {
            return _bits.Get(offset >> _shift);
        }
    }

    /// <summary>The first dirty byte at or after <paramref name="from"/>, or -1.</summary>
    public long NextDirty(long from)
    {
        lock (_lock)
        {
            // The last chunk may run past the device end; the bytes there are never dirty.
            if (from >= _length)
            {
                return -1;
            }

            var bit = _bits.NextSet(Math.Max(0, from) >> _shift);
            return bit < 0 ? -1 : Math.Max(from, bit << _shift);
        }
    }

    /// <summary>The first clean byte at or after <paramref name="from"/>, or <see cref="Length"/> when none.</summary>
    public long NextClean(long from)
    {
        lock (_lock)
        {
            if (from >= _length)
            {
                return _length;
            }

            var bit = _bits.NextClear(Math.Max(0, from) >> _shift);
            return Math.Min(_length, Math.Max(from, bit << _shift));
        }
    }

    /// <summary>
    /// Where the run of dirty chunks starting at the chunk holding <paramref name="offset"/> ends, looking no
    /// further than <paramref name="limit"/>: the start of the first clean chunk, or <paramref name="limit"/>
    /// (clamped to the device end) when every chunk up to it is dirty; <paramref name="offset"/> itself when its
    /// chunk is clean. Reads a word (64 chunks) at a time.
    /// </summary>
    public long DirtyRunEnd(long offset, long limit)
    {
        lock (_lock)
        {
            limit = Math.Min(limit, _length);
            if (offset >= limit)
            {
                return limit;
            }

            var first = Math.Max(0, offset) >> _shift;
            var clean = _bits.NextClear(first, (limit + Granularity - 1) >> _shift);
            return clean == first ? offset : Math.Min(limit, clean << _shift);
        }
    }

    /// <summary>
    /// The first dirty area at or after <paramref name="from"/>: it starts at a chunk boundary (or at
    /// <paramref name="from"/>), covers consecutive dirty chunks, is at most <paramref name="maxLength"/>
    /// bytes (at least one chunk), and stops at the device end.
    /// </summary>
    public bool TryGetNextDirtyArea(long from, long maxLength, out ByteRange area)
    {
        lock (_lock)
        {
            // Past the device end, even inside a dirty partial last chunk, there is no area: without this
            // the search from the device end returned an empty area there, and EnumerateDirtyAreas never ended.
            if (from >= _length)
            {
                area = default;
                return false;
            }

            var first = _bits.NextSet(Math.Max(0, from) >> _shift);
            if (first < 0)
            {
                area = default;
                return false;
            }

            var start = Math.Max(from, first << _shift);
            var maxChunks = Math.Max(1, maxLength >> _shift);
            var endBit = _bits.NextClear(first, first + maxChunks);
            var end = Math.Min(_length, endBit << _shift);
            var limit = Math.Max(maxLength, Granularity);
            if (end - start > limit)
            {
                end = start + limit;
            }

            area = new ByteRange(start, end - start);
            return true;
        }
    }

    /// <summary>Every dirty area from the start, each at most <paramref name="maxLength"/> bytes.</summary>
    /// <remarks>Reads a moving target when writers run: an area is as dirty as it was when reached.</remarks>
    public IEnumerable<ByteRange> EnumerateDirtyAreas(long maxLength = long.MaxValue)
    {
        long position = 0;
        while (TryGetNextDirtyArea(position, maxLength, out var area))
        {
            yield return area;
            position = area.End;
        }
    }

    /// <summary>Follows the device to a new length; chunks past a shrunk end are dropped.</summary>
    public void Resize(long length)
    {
        // Checked here: a negative length rounds to zero chunks, so HBitmap would not refuse it and
        // Length would go negative.
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        lock (_lock)
        {
            _length = length;
            _bits.Resize(ChunkCount(length));
        }
    }
}
