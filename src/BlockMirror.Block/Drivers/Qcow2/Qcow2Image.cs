using System.Buffers.Binary;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// The metadata of one open qcow2 image: the header, the active L1 table and the refcount table in
/// memory, L2 tables and refcount blocks in write-back caches, the cluster allocator, and the order in
/// which metadata reaches the file. Every member is used under the driver's metadata lock; this class
/// does no locking of its own. Data requests (<see cref="Qcow2Driver"/>) look mappings up here and do
/// their data I/O outside the lock.
/// </summary>
/// <remarks>
/// <para><b>Crash safety.</b> The file never holds a pointer to something that is not there yet:
/// a new refcount block is written before the refcount table points at it; refcounts are written (and,
/// unless lazy refcounts are on, flushed) before the L2 tables that point at the clusters they count;
/// a new L2 table is written before its L1 entry; data is written before its L2 entry. Going the other
/// way, a cluster is unlinked from its L2 table on disk before its refcount drops. A process killed at
/// any point therefore leaves at worst clusters whose refcount is too high: leaks, never corruption.</para>
/// <para><b>Lazy refcounts</b> (compatible feature bit 0) drop the flushes between those steps; the image
/// is then marked dirty before the first metadata write and clean again on close, and an image found
/// dirty is repaired when it is next opened for writing.</para>
/// </remarks>
internal sealed partial class Qcow2Image : IQcow2TableStore, IDisposable
{
    /// <summary>
    /// The file grows in steps of at least this much, and of its own length (it doubles) up to
    /// <see cref="MaxFileGrowthStep"/>, so that allocations seldom call ftruncate. Each call is costly: with
    /// O_DIRECT the file system first waits for every write in flight to the file, and it runs under the
    /// metadata lock. A sequential 1 GiB write spent a fifth of its time there with 1 MiB steps, and with
    /// steps of an eighth of the length still made 59 calls, up to 25 ms each; doubling from 16 MiB makes 8.
    /// A clean close cuts the unused tail off again.
    /// </summary>
    const long FileGrowthStep = 16 << 20;

    const long MaxFileGrowthStep = 256L << 20;

    /// <summary>
    /// With O_DIRECT, blocks are allocated ahead of the clusters in use by a sixteenth of the file's used length,
    /// at least this much and at most <see cref="MaxFileGrowthStep"/> (see <see cref="EnsureFileLengthAsync"/>).
    /// </summary>
    const long MinPreallocationAhead = 4 << 20;

    readonly NodeEdge _file;
    readonly byte[] _headerBlock;
    readonly int _fileAlignment;
    readonly Qcow2TableCache _l2Cache;
    readonly Qcow2TableCache _refblockCache;

    // The active L1 table and the refcount table, decoded. Their clusters on disk are rewritten a block
    // at a time when an entry changes (write-through: both are small and change rarely).
    ulong[] _l1;
    ulong[] _reftable;

    // Where metadata lives, for the overlap checks before data is written (QEMU's overlap-check).
    readonly HashSet<long> _l2Offsets = [];
    readonly HashSet<long> _refblockOffsets = [];

    // The allocator's lowest cluster that may be free, and the end of the used part of the file: clusters
    // from there on were never written since open, so they read as zeroes (copy-on-write from zeroes need
    // not write them) and new refcount structures can be put there.
    long _freeClusterHint;
    long _untouchedFrom;

    // Write-order obligations between the caches (QEMU's cache dependencies), see Qcow2Image.WriteBack.cs.
    bool _l2NeedsRefcountsFirst;
    bool _refcountsNeedL2Durable;
    bool _markedDirty;

    // This image made its file longer: the part past the last used cluster is cut off again at close.
    bool _grewFile;

    // With O_DIRECT: the file's blocks below this are allocated (or were there at open); at most its length.
    long _preallocatedTo;

    Qcow2Image(NodeEdge file, Qcow2Header header, byte[] headerBlock, string name, bool writable, long l2CacheBytes, FileDiscardMode discard)
    {
        _file = file;
        Header = header;
        _headerBlock = headerBlock;
        Name = name;
        Writable = writable;
        Geometry = new Qcow2Geometry(header);
        Discard = discard;
        _fileAlignment = Math.Max(1, file.Node.Limits.RequestAlignment);
        var bufferAlignment = Math.Max(_fileAlignment, 64);
        _l2Cache = new Qcow2TableCache(this, "L2", (int)Math.Clamp(l2CacheBytes / Geometry.ClusterSize, 2, int.MaxValue), Geometry.ClusterSize, bufferAlignment);
        _refblockCache = new Qcow2TableCache(this, "refcount block", 4, Geometry.ClusterSize, bufferAlignment);
        _l1 = [];
        _reftable = [];
        Lazy = (header.CompatibleFeatures & Qcow2Header.CompatibleLazyRefcounts) != 0;
    }

    public Qcow2Header Header { get; }

    public Qcow2Geometry Geometry { get; }

    /// <summary>The image file's name, for messages.</summary>
    public string Name { get; }

    public bool Writable { get; private set; }

    /// <summary>Lazy refcounts: no flushes between metadata writes; the dirty bit covers the gap.</summary>
    public bool Lazy { get; }

    public FileDiscardMode Discard { get; }

    /// <summary>The image is marked corrupt (found so at open, or by a check while running): no more writes.</summary>
    public bool Corrupt { get; private set; }

    /// <summary>Host ranges that data requests are using outside the lock; the allocator leaves them alone.</summary>
    public Qcow2HostRanges HostInFlight { get; } = new();

    public NodeEdge File => _file;

    /// <summary>The internal snapshots, read (and checked as QEMU checks them) at open.</summary>
    public IReadOnlyList<SnapshotInfo> Snapshots { get; private set; } = [];

    public long Size => Header.Size;

    /// <summary>Reads the tables the image needs in memory and checks every pointer in them.</summary>
    public static async ValueTask<Qcow2Image> OpenAsync(NodeEdge file, Qcow2Header header, byte[] headerBlock, string name, bool writable,
        long l2CacheBytes, FileDiscardMode discard, CancellationToken cancellationToken)
    {
        var image = new Qcow2Image(file, header, headerBlock, name, writable, l2CacheBytes, discard);
        try
        {
            await image.LoadTablesAsync(cancellationToken).ConfigureAwait(false);
            image.Snapshots = await Qcow2Snapshots.ReadAsync(image, cancellationToken).ConfigureAwait(false);
            image.BitmapDirectory = await Qcow2BitmapDirectory.LoadAsync(image.ReadClampedAsync, header, name, cancellationToken).ConfigureAwait(false);
            if (writable && header.Bitmaps is { } bitmaps && image.OverlapsMetadata(bitmaps.DirectoryOffset, bitmaps.DirectorySize))
            {
                // Opened for writing, the directory is rewritten in place (the in-use flags): over a table, that would damage it.
                throw new Qcow2Exception(name, $"the bitmap directory at offset {bitmaps.DirectoryOffset} overlaps other metadata; the image cannot be opened read/write");
            }

            image.Corrupt = (header.IncompatibleFeatures & Qcow2Header.IncompatibleCorrupt) != 0;
            return image;
        }
        catch
        {
            image.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads the active L1 table and the refcount table (QEMU reads both at open). Their entries are checked
    /// where they are used, as QEMU checks them (<see cref="L2TableOffset"/>, <see cref="RefblockOffset"/>), so
    /// that an image QEMU opens opens here too. An image opened for writing must also have no table that
    /// points into other metadata: a write through it would destroy the header or another table.
    /// </summary>
    async ValueTask LoadTablesAsync(CancellationToken cancellationToken)
    {
        var g = Geometry;
        _l1 = await ReadEntriesAsync(Header.L1TableOffset, Header.L1Size, cancellationToken).ConfigureAwait(false);
        _reftable = await ReadEntriesAsync(Header.RefcountTableOffset, Header.RefcountTableClusters * (g.ClusterSize / 8), cancellationToken).ConfigureAwait(false);
        for (var i = 0; i < _l1.Length; i++)
        {
            // Unaligned offsets are corruption found at use (and never written through); they own no cluster.
            var offset = Qcow2Entries.HostOffset(_l1[i]);
            if (offset != 0 && (offset & g.ClusterMask) == 0 && !_l2Offsets.Add(offset) && Writable)
            {
                throw new Qcow2Exception(Name, $"L1 table entry {i}: L2 table offset {offset} is used by another L1 entry too; the image cannot be opened read/write");
            }
        }

        for (var i = 0; i < _reftable.Length; i++)
        {
            var offset = Qcow2Entries.HostOffset(_reftable[i]);
            if (offset != 0 && (offset & g.ClusterMask) == 0 && (!_refblockOffsets.Add(offset) || _l2Offsets.Contains(offset)) && Writable)
            {
                throw new Qcow2Exception(Name, $"refcount table entry {i}: refcount block offset {offset} is used by another table too; the image cannot be opened read/write");
            }
        }

        if (Writable)
        {
            CheckNoOverlapsForWriting();
        }

        _untouchedFrom = g.ClustersFor(_file.Node.Length);
        _preallocatedTo = _file.Node.Length;
    }

    /// <summary>For an image opened for writing: the tables and the tables they point at keep clear of each other.</summary>
    void CheckNoOverlapsForWriting()
    {
        var g = Geometry;
        var l1Bytes = g.ClustersFor((long)Header.L1Size * 8) << g.ClusterBits;
        var reftableBytes = (long)Header.RefcountTableClusters << g.ClusterBits;
        (string What, long Start, long Length)[] fixedAreas =
        [
            ("the header", 0, g.ClusterSize),
            ("the L1 table", Header.L1TableOffset, l1Bytes),
            ("the refcount table", Header.RefcountTableOffset, reftableBytes),
        ];

        void Check(string what, long offset, long length)
        {
            foreach (var (area, start, areaLength) in fixedAreas)
            {
                if (area != what && length > 0 && offset < start + areaLength && start < offset + length)
                {
                    throw new Qcow2Exception(Name, $"{what} at offset {offset} overlaps {area} (offset {start}); the image cannot be opened read/write");
                }
            }
        }

        Check("the L1 table", Header.L1TableOffset, l1Bytes);
        Check("the refcount table", Header.RefcountTableOffset, reftableBytes);
        foreach (var offset in _l2Offsets)
        {
            Check("an L2 table", offset, g.ClusterSize);
        }

        foreach (var offset in _refblockOffsets)
        {
            Check("a refcount block", offset, g.ClusterSize);
        }
    }

    /// <summary>The L2 table an L1 entry points at (0: none); an unaligned one is corruption, found where QEMU finds it.</summary>
    long L2TableOffset(long l1Index)
    {
        var offset = Qcow2Entries.HostOffset(_l1[l1Index]);
        if ((offset & Geometry.ClusterMask) != 0)
        {
            throw new Qcow2Corruption($"L2 table offset 0x{offset:x} unaligned (L1 index: 0x{l1Index:x})");
        }

        return offset;
    }

    /// <summary>The refcount block a refcount table entry points at; an unaligned one is corruption (QEMU's check at use).</summary>
    long RefblockOffset(long tableIndex)
    {
        var offset = Qcow2Entries.HostOffset(_reftable[tableIndex]);
        if ((offset & Geometry.ClusterMask) != 0)
        {
            throw new Qcow2Corruption($"Refblock offset 0x{offset:x} unaligned (reftable index: 0x{tableIndex:x})");
        }

        return offset;
    }

    /// <summary>Reads <paramref name="count"/> big-endian u64 entries (a table whose tail may lie past the end of the file).</summary>
    async ValueTask<ulong[]> ReadEntriesAsync(long offset, int count, CancellationToken cancellationToken)
    {
        var entries = new ulong[count];
        if (count == 0)
        {
            return entries;
        }

        var bytes = new byte[(long)count * 8];
        await ReadClampedAsync(offset, bytes, cancellationToken).ConfigureAwait(false);
        for (var i = 0; i < count; i++)
        {
            entries[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 8));
        }

        return entries;
    }

    /// <summary>Reads from the file; the part of the range past its end reads as zeroes (see <see cref="Qcow2FileReads"/>).</summary>
    public ValueTask ReadClampedAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        Qcow2FileReads.ReadClampedAsync(_file.ReadAsync, _file.Node.Length, _fileAlignment, offset, buffer, cancellationToken);

    /// <summary>Grows the file (in steps, see <see cref="FileGrowthStep"/>) so that writes up to <paramref name="end"/> are inside it.</summary>
    /// <remarks>
    /// <para>With O_DIRECT the blocks up to a little past <paramref name="end"/> are also allocated (fallocate
    /// ZERO_RANGE: blocks reserved, still reading as zeroes). A direct write into a hole makes the file system
    /// allocate under its inode lock, so writes to new clusters ran one at a time; into allocated blocks they
    /// run side by side. Measured with 1 GiB of random 64 KiB writes at depth 16: 0.76 s instead of about
    /// 1.7 s. Through the page cache the file system allocates at writeback anyway, and nothing is allocated
    /// ahead.</para>
    /// <para>How far ahead: a sixteenth of the used length (<see cref="MinPreallocationAhead"/> to
    /// <see cref="MaxFileGrowthStep"/>), not the whole growth step. Preallocating each step whole left up to
    /// 256 MiB allocated past the data, a quarter more than a 1 GiB mirror copied, until a clean close cut it
    /// off. Each allocation made here is still at least 4 MiB ahead of the writes, which land on clusters
    /// allocated before them, so the writes keep running side by side; the cost is more fallocate calls (about
    /// 40 for the first GiB instead of 8; each waits for the direct writes in flight, a few milliseconds), while
    /// the ftruncate calls, the dearer ones, still come in doubling steps. The allocation past the used
    /// clusters stays under a sixteenth of the file plus 4 MiB.</para>
    /// </remarks>
    public async ValueTask EnsureFileLengthAsync(long end, CancellationToken cancellationToken)
    {
        var length = _file.Node.Length;
        if (length >= end && (_fileAlignment <= 1 || end <= _preallocatedTo))
        {
            return;
        }

        // A truncation (a shrink, a close) may have cut the file below what was allocated.
        _preallocatedTo = Math.Min(_preallocatedTo, length);
        if (length < end)
        {
            _grewFile = true;
            var step = Math.Max(Geometry.ClusterSize, Math.Clamp(length, FileGrowthStep, MaxFileGrowthStep));
            step = (step + Geometry.ClusterMask) & ~Geometry.ClusterMask;
            length = (end + step - 1) / step * step;
            await _file.TruncateAsync(length, cancellationToken).ConfigureAwait(false);
        }

        if (_fileAlignment > 1)
        {
            // From the first whole block: a partial last block of the old file is allocated already.
            var from = (_preallocatedTo + _fileAlignment - 1) / _fileAlignment * _fileAlignment;
            var ahead = Math.Clamp(end / 16, MinPreallocationAhead, MaxFileGrowthStep);
            var to = Math.Min(length, end + ahead) / _fileAlignment * _fileAlignment;
            if (to > from)
            {
                await PreallocateAsync(from, to - from, cancellationToken).ConfigureAwait(false);
                _preallocatedTo = to;
            }
        }
    }

    /// <summary>
    /// Allocates file blocks for [<paramref name="offset"/>, +<paramref name="length"/>) that read as zeroes
    /// (fallocate ZERO_RANGE), so that direct writes into them need no allocation; a file system without
    /// ZERO_RANGE just skips it.
    /// </summary>
    public async ValueTask PreallocateAsync(long offset, long length, CancellationToken cancellationToken)
    {
        try
        {
            await _file.WriteZeroesAsync(offset, length, RequestFlags.NoFallback, cancellationToken).ConfigureAwait(false);
        }
        catch (BlockIOException e) when (e.Errno == BlockErrno.ENOTSUP)
        {
        }
    }

    /// <summary>
    /// Writes header bytes [start, end) of the in-memory header block, widened to the file's alignment.
    /// Fields that must change together are given in one range, so they land in one write.
    /// </summary>
    async ValueTask WriteHeaderAsync(int start, int end, CancellationToken cancellationToken)
    {
        var from = start / _fileAlignment * _fileAlignment;
        var to = Math.Min(_headerBlock.Length, (end + _fileAlignment - 1) / _fileAlignment * _fileAlignment);
        await EnsureFileLengthAsync(to, cancellationToken).ConfigureAwait(false);
        await _file.WriteAsync(from, _headerBlock.AsMemory(from, to - from), RequestFlags.None, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sets or clears incompatible feature bits in the header, on disk, and flushes.</summary>
    async ValueTask SetIncompatibleFeaturesAsync(ulong features, CancellationToken cancellationToken)
    {
        if (Header.Version < 3)
        {
            return;
        }

        Header.IncompatibleFeatures = features;
        BinaryPrimitives.WriteUInt64BigEndian(_headerBlock.AsSpan(72), features);
        await WriteHeaderAsync(72, 80, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Clears the auto-clear feature bits this implementation does not maintain, before the first write (the spec
    /// requires it): after a write their extensions no longer describe the disk. The bitmaps bit stays while the
    /// image has bitmaps, which the driver keeps up to date and marks in use (<see cref="MarkBitmapsInUseAsync"/>).
    /// </summary>
    public ValueTask ClearAutoclearFeaturesAsync(CancellationToken cancellationToken)
    {
        var kept = Header.Bitmaps is null ? 0 : Header.AutoclearFeatures & Qcow2Header.AutoclearBitmaps;
        return Header.Version < 3 || Header.AutoclearFeatures == kept ? ValueTask.CompletedTask : SetAutoclearFeaturesAsync(kept, cancellationToken);
    }

    /// <summary>Writes the autoclear feature bits to the header, on disk, and flushes.</summary>
    async ValueTask SetAutoclearFeaturesAsync(ulong features, CancellationToken cancellationToken)
    {
        Header.AutoclearFeatures = features;
        BinaryPrimitives.WriteUInt64BigEndian(_headerBlock.AsSpan(88), features);
        await WriteHeaderAsync(88, 96, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the header cluster whole from <see cref="Header"/> (as QEMU's qcow2_update_header does) and flushes.
    /// Throws <see cref="InvalidOperationException"/>, with nothing written, when it does not fit in one cluster.
    /// </summary>
    async ValueTask RewriteHeaderAsync(CancellationToken cancellationToken)
    {
        Header.Serialize().CopyTo(_headerBlock, 0);
        await WriteHeaderAsync(0, _headerBlock.Length, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Names another backing file (and its format) in the header, or none (QEMU's bdrv_change_backing_file,
    /// which block-commit and a mirror's pivot use). The header cluster is rewritten whole, as QEMU does;
    /// extensions and fields this code does not know are kept as they were.
    /// </summary>
    public async ValueTask ChangeBackingFileAsync(string? name, string? format, CancellationToken cancellationToken)
    {
        var (oldName, oldFormat) = (Header.BackingFile, Header.BackingFormat);
        Header.BackingFile = name;
        Header.BackingFormat = name is null ? null : format;
        try
        {
            await RewriteHeaderAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidOperationException e)
        {
            Header.BackingFile = oldName;
            Header.BackingFormat = oldFormat;
            Header.Serialize();
            throw BlockIOException.Create(BlockErrno.EINVAL, Name, BlockOperation.Write, 0, 0, $"the backing file name '{name}' does not fit: {e.Message}");
        }
    }

    /// <summary>
    /// Switches between read-only and read-write (the file under it is read-write throughout). Going
    /// read-only writes everything back first; going read-write refuses an image marked corrupt or left
    /// dirty by another writer, which only a fresh open (that repairs it) may write.
    /// </summary>
    public async ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken)
    {
        if (readOnly)
        {
            await CloseAsync(cancellationToken).ConfigureAwait(false);
            Writable = false;
            return;
        }

        if (Corrupt)
        {
            throw CorruptRefusal(BlockOperation.Write, 0, 0);
        }

        if ((Header.IncompatibleFeatures & Qcow2Header.IncompatibleDirty) != 0)
        {
            throw BlockIOException.Create(BlockErrno.EBUSY, Name, BlockOperation.Write, 0, 0,
                "the image was left dirty by another writer: open it read-write afresh, which repairs its refcounts");
        }

        Writable = true;
        await ClearAutoclearFeaturesAsync(cancellationToken).ConfigureAwait(false);
        await MarkBitmapsInUseAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Clears a dirty bit left by an earlier writer, after the refcounts were repaired.</summary>
    public ValueTask ClearDirtyBitAsync(CancellationToken cancellationToken) =>
        SetIncompatibleFeaturesAsync(Header.IncompatibleFeatures & ~Qcow2Header.IncompatibleDirty, cancellationToken);

    /// <summary>
    /// Metadata was found inconsistent: mark the image corrupt on disk (when it is open for writing) so no
    /// program writes more damage into it, and return the error for the request that found it.
    /// </summary>
    public async ValueTask<BlockIOException> SignalCorruptionAsync(BlockOperation operation, long offset, long length, string problem, CancellationToken cancellationToken)
    {
        var first = !Corrupt;
        Corrupt = true;
        if (first && Writable)
        {
            try
            {
                await SetIncompatibleFeaturesAsync(Header.IncompatibleFeatures | Qcow2Header.IncompatibleCorrupt, CancellationToken.None).ConfigureAwait(false);
            }
            catch (IOException)
            {
                // The request fails either way; the in-memory flag still stops further writes.
            }
        }

        // QEMU's words (qcow2_signal_corruption): marked on disk when open for writing, only reported otherwise.
        return BlockIOException.Create(BlockErrno.EIO, Name, operation, offset, length, Writable
            ? $"qcow2: Marking image as corrupt: {problem}; further corruption events will be suppressed"
            : $"qcow2: Image is corrupt: {problem}; further non-fatal corruption events will be suppressed");
    }

    /// <summary>The error for a write to an image that is marked corrupt.</summary>
    public BlockIOException CorruptRefusal(BlockOperation operation, long offset, long length) =>
        BlockIOException.Create(BlockErrno.EACCES, Name, operation, offset, length,
            $"qcow2 image '{Name}' is marked corrupt and refuses writes (run 'blockmirror check -r all' to repair it)");

    /// <summary>True when [offset, offset + length) of the file holds qcow2 metadata that data must never overwrite.</summary>
    public bool OverlapsMetadata(long offset, long length)
    {
        var g = Geometry;
        var end = offset + length;
        if (offset < g.ClusterSize)
        {
            return true;
        }

        if (offset < Header.L1TableOffset + (g.ClustersFor((long)_l1.Length * 8) << g.ClusterBits) && Header.L1TableOffset < end)
        {
            return true;
        }

        if (offset < Header.RefcountTableOffset + ((long)Header.RefcountTableClusters << g.ClusterBits) && Header.RefcountTableOffset < end)
        {
            return true;
        }

        for (var cluster = g.ClusterStart(offset); cluster < end; cluster += g.ClusterSize)
        {
            if (_l2Offsets.Contains(cluster) || _refblockOffsets.Contains(cluster))
            {
                return true;
            }
        }

        return false;
    }

    public void Dispose()
    {
        _l2Cache.Dispose();
        _refblockCache.Dispose();
    }
}
