using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Persistent dirty bitmaps on disk: the directory as read at open, reading a bitmap's data, storing a new set
// of bitmaps, and marking them in use while the image is open for writing.
//
// Storing never changes what the header points at in place: new data clusters, tables and directory are
// written and their refcounts made durable first, then one header write switches to them, then the old ones
// are freed. A crash before the header write leaves the old bitmaps (and leaked clusters), after it the new.
internal sealed partial class Qcow2Image
{
    /// <summary>One bitmap of a set to store: the entry's name, flags and granularity, and either new data or none (the entry's table is kept).</summary>
    public readonly record struct BitmapToStore(Qcow2BitmapEntry Entry, byte[]? Data);

    /// <summary>The bitmap directory as it is on disk (read and checked at open).</summary>
    public IReadOnlyList<Qcow2BitmapEntry> BitmapDirectory { get; private set; } = [];

    /// <summary>
    /// Reads a bitmap's serialized data (<see cref="Qcow2BitmapTable.DataBytes"/> bytes for the disk's size), as QEMU
    /// loads it at open (see <see cref="Qcow2BitmapTable.LoadAsync"/>). Only for a bitmap not marked in use: the
    /// data of one in use is not trusted, nor read.
    /// </summary>
    public async ValueTask<byte[]> ReadBitmapDataAsync(Qcow2BitmapEntry entry, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var table = await Qcow2BitmapTable.LoadAsync(ReadClampedAsync, entry, g, Size, Name, cancellationToken).ConfigureAwait(false);
        var data = new byte[Qcow2BitmapTable.DataBytes(Size, entry.GranularityBits)];
        for (var i = 0; i < table.Length; i++)
        {
            var start = (long)i << g.ClusterBits;
            var part = data.AsMemory((int)start, (int)Math.Min(g.ClusterSize, data.Length - start));
            var offset = (long)(table[i] & Qcow2BitmapTable.OffsetMask);
            if (offset != 0)
            {
                await ReadClampedAsync(offset, part, cancellationToken).ConfigureAwait(false);
            }
            else if ((table[i] & Qcow2BitmapTable.AllOnes) != 0)
            {
                part.Span.Fill(0xff);
            }
        }

        // Bits past the disk's end must be zero; clear them whatever the file says (an all-ones cluster sets them).
        var chunks = (Size + entry.Granularity - 1) >> entry.GranularityBits;
        if ((chunks & 7) != 0)
        {
            data[^1] &= (byte)((1 << (int)(chunks & 7)) - 1);
        }

        return data;
    }

    /// <summary>
    /// Stores <paramref name="bitmaps"/> as the image's whole set, in that order (QEMU's
    /// qcow2_store_persistent_dirty_bitmaps and update_ext_header_and_dir): each bitmap with data gets new data
    /// clusters (only where a bit is set) and a new table; the rest keep theirs. A new directory is written, the
    /// header is pointed at it (with the autoclear bit set; with no bitmaps the extension and the bit go), and
    /// then the old directory and the tables and data no longer used are freed.
    /// </summary>
    public async ValueTask StoreBitmapsAsync(IReadOnlyList<BitmapToStore> bitmaps, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var entries = new List<Qcow2BitmapEntry>(bitmaps.Count);
        var allocated = new List<long>();
        var (oldCount, oldSize, oldOffset) = Header.Bitmaps ?? (0, 0, 0);
        try
        {
            foreach (var (entry, data) in bitmaps)
            {
                entries.Add(data is null ? entry : await WriteBitmapAsync(entry, data, allocated, cancellationToken).ConfigureAwait(false));
            }

            long directoryOffset = 0, directorySize = 0;
            if (entries.Count > 0)
            {
                var directory = Qcow2BitmapDirectory.Encode(entries);
                directorySize = directory.Length;
                directoryOffset = await WriteNewClustersAsync(directory, allocated, cancellationToken).ConfigureAwait(false);
            }

            // The refcounts of everything just written are durable before the header points at it.
            await MakeRefcountsDurableAsync(cancellationToken).ConfigureAwait(false);
            await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
            Header.SetBitmaps(entries.Count, directorySize, directoryOffset);
            await RewriteHeaderAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            Header.SetBitmaps(oldCount, oldSize, oldOffset);
            await ReleaseUnlinkedAsync(allocated, punch: false, CancellationToken.None).ConfigureAwait(false);
            throw;
        }

        var old = BitmapDirectory;
        BitmapDirectory = entries;
        var freed = new List<long>();
        if (oldSize > 0)
        {
            AddClusters(freed, oldOffset, oldSize);
        }

        var kept = entries.Select(e => e.TableOffset).ToHashSet();
        foreach (var entry in old.Where(e => !kept.Contains(e.TableOffset)))
        {
            // A table that cannot be read (that of a bitmap left in use may be anything) is left leaked, as QEMU leaves it.
            if (await Qcow2BitmapTable.ReadAsync(ReadClampedAsync, entry, g.ClusterSize, cancellationToken).ConfigureAwait(false) is { } table)
            {
                foreach (var e in table.Where(e => (e & Qcow2BitmapTable.OffsetMask) != 0))
                {
                    freed.Add((long)(e & Qcow2BitmapTable.OffsetMask) >> g.ClusterBits);
                }

                AddClusters(freed, entry.TableOffset, (long)entry.TableSize * 8);
            }
        }

        // Only what the bitmaps really own: a hostile table can name a cluster that is not counted, or that holds the
        // image's own metadata (freeing that would let the allocator overwrite it). Those stay as they are.
        var owned = new List<long>(freed.Count);
        foreach (var cluster in freed.Distinct())
        {
            if (!OverlapsMetadata(cluster << g.ClusterBits, g.ClusterSize) && await GetRefcountAsync(cluster, cancellationToken).ConfigureAwait(false) > 0)
            {
                owned.Add(cluster);
            }
        }

        await ReleaseUnlinkedAsync(owned, punch: false, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Writes one bitmap's data clusters and table; returns its entry pointing at the new table.</summary>
    async ValueTask<Qcow2BitmapEntry> WriteBitmapAsync(Qcow2BitmapEntry entry, byte[] data, List<long> allocated, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var table = new ulong[Qcow2BitmapTable.EntriesFor(Size, entry.GranularityBits, g.ClusterBits)];
        if (data.Length != Qcow2BitmapTable.DataBytes(Size, entry.GranularityBits) || table.Length > Qcow2BitmapDirectory.MaxTableEntries ||
            (ulong)table.Length * (ulong)g.ClusterSize > Qcow2BitmapDirectory.MaxBitmapBytes)
        {
            throw new IOException($"qcow2 image '{Name}': Bitmap '{entry.Name}' is too big");
        }

        for (var i = 0; i < table.Length; i++)
        {
            var start = (long)i << g.ClusterBits;
            var part = data.AsSpan((int)start, (int)Math.Min(g.ClusterSize, data.Length - start));
            if (part.ContainsAnyExcept((byte)0))
            {
                table[i] = (ulong)await WriteNewClustersAsync(part.ToArray(), allocated, cancellationToken).ConfigureAwait(false);
            }
        }

        var tableOffset = await WriteNewClustersAsync(Qcow2BitmapTable.Encode(table, table.Length * 8), allocated, cancellationToken).ConfigureAwait(false);
        return entry with { TableOffset = tableOffset, TableSize = table.Length };
    }

    /// <summary>Allocates clusters for <paramref name="bytes"/>, writes them (zero-padded to whole clusters) and returns their offset.</summary>
    async ValueTask<long> WriteNewClustersAsync(byte[] bytes, List<long> allocated, CancellationToken cancellationToken)
    {
        var g = Geometry;
        var count = g.ClustersFor(bytes.Length);
        var (first, _) = await AllocateClustersAsync(count, cancellationToken).ConfigureAwait(false);
        for (var c = first; c < first + count; c++)
        {
            allocated.Add(c);
        }

        var padded = new byte[count << g.ClusterBits];
        bytes.CopyTo(padded, 0);
        await _file.WriteAsync(first << g.ClusterBits, padded, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        return first << g.ClusterBits;
    }

    void AddClusters(List<long> clusters, long offset, long length)
    {
        var g = Geometry;
        for (var c = offset >> g.ClusterBits; c < g.ClustersFor(offset + length); c++)
        {
            clusters.Add(c);
        }
    }

    /// <summary>
    /// Sets the in-use flag of every bitmap in the directory, in place, before anything is written to an image
    /// opened for writing (QEMU's update_ext_header_and_dir_in_place): the autoclear bit is cleared while the
    /// directory is rewritten, so that a crash in between leaves the bitmaps invalid rather than half marked.
    /// </summary>
    public async ValueTask MarkBitmapsInUseAsync(CancellationToken cancellationToken)
    {
        if (Header.Bitmaps is not { } bitmaps || BitmapDirectory.All(e => e.InUse))
        {
            return;
        }

        var g = Geometry;
        var marked = BitmapDirectory.Select(e => e with { Flags = e.Flags | Qcow2BitmapEntry.FlagInUse }).ToList();
        var clusters = new byte[g.ClustersFor(bitmaps.DirectorySize) << g.ClusterBits];
        await ReadClampedAsync(bitmaps.DirectoryOffset, clusters, cancellationToken).ConfigureAwait(false);
        Qcow2BitmapDirectory.Encode(marked).CopyTo(clusters, 0);

        await SetAutoclearFeaturesAsync(Header.AutoclearFeatures & ~Qcow2Header.AutoclearBitmaps, cancellationToken).ConfigureAwait(false);
        await EnsureFileLengthAsync(bitmaps.DirectoryOffset + clusters.Length, cancellationToken).ConfigureAwait(false);
        await _file.WriteAsync(bitmaps.DirectoryOffset, clusters, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await _file.FlushAsync(cancellationToken).ConfigureAwait(false);
        await SetAutoclearFeaturesAsync(Header.AutoclearFeatures | Qcow2Header.AutoclearBitmaps, cancellationToken).ConfigureAwait(false);
        BitmapDirectory = marked;
    }
}
