using System.Buffers.Binary;
using System.Numerics;
using BlockMirror.Block.Bitmaps;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// A persistent bitmap's table and data (docs/interop/qcow2.txt, "Bitmap table", "Bitmap data"). The data is
/// the bitmap serialized: bit <c>k</c> of byte <c>j</c> (least significant first) covers the disk bytes
/// [(8j + k) · granularity, +granularity); it is cut into clusters, and the table holds one entry per cluster.
/// <code>
/// table entry (big-endian u64):  bit 0: all ones (only when the offset is 0)   bits 1-8: reserved
///                                bits 9-55: host offset of the data cluster (0: not stored)   bits 56-63: reserved
/// </code>
/// A cluster not stored reads as zeroes, or as ones when bit 0 is set. Bits past the disk's end are zero.
/// </summary>
internal static class Qcow2BitmapTable
{
    public const ulong OffsetMask = 0x00fffffffffffe00UL;
    public const ulong ReservedMask = 0xff000000000001feUL;
    public const ulong AllOnes = 1UL;

    /// <summary>QEMU's check_table_entry: no reserved bit, and a stored cluster is aligned and not also "all ones".</summary>
    public static bool IsValidEntry(ulong entry, int clusterSize)
    {
        if ((entry & ReservedMask) != 0)
        {
            return false;
        }

        var offset = entry & OffsetMask;
        return offset == 0 || ((entry & AllOnes) == 0 && offset % (ulong)clusterSize == 0);
    }

    /// <summary>Bytes of serialized data for a disk of <paramref name="size"/> bytes (QEMU's get_bitmap_bytes_needed).</summary>
    public static long DataBytes(long size, int granularityBits)
    {
        var bits = (size + (1L << granularityBits) - 1) >> granularityBits;
        return (bits + 7) / 8;
    }

    /// <summary>Entries the table needs: one per cluster of data.</summary>
    public static long EntriesFor(long size, int granularityBits, int clusterBits) =>
        (DataBytes(size, granularityBits) + (1L << clusterBits) - 1) >> clusterBits;

    /// <summary>A bitmap's table through <paramref name="read"/>, or null when an entry is invalid (QEMU's bitmap_table_load).</summary>
    public static async ValueTask<ulong[]?> ReadAsync(Func<long, Memory<byte>, CancellationToken, ValueTask> read, Qcow2BitmapEntry entry,
        int clusterSize, CancellationToken cancellationToken)
    {
        var bytes = new byte[(long)entry.TableSize * 8];
        await read(entry.TableOffset, bytes, cancellationToken).ConfigureAwait(false);
        var table = Decode(bytes);
        return Array.TrueForAll(table, e => IsValidEntry(e, clusterSize)) ? table : null;
    }

    /// <summary>
    /// A bitmap's table as QEMU reads it when it loads the bitmap at open (load_bitmap): one with an invalid entry,
    /// or whose size does not fit a disk of <paramref name="size"/> bytes, is refused with QEMU's message. Only for
    /// a bitmap not marked in use: QEMU does not read the table of one in use.
    /// </summary>
    public static async ValueTask<ulong[]> LoadAsync(Func<long, Memory<byte>, CancellationToken, ValueTask> read, Qcow2BitmapEntry entry,
        Qcow2Geometry geometry, long size, string image, CancellationToken cancellationToken)
    {
        var table = await ReadAsync(read, entry, geometry.ClusterSize, cancellationToken).ConfigureAwait(false) ??
            throw new Qcow2Exception(image, $"Could not read bitmap_table table from image for bitmap '{entry.Name}': Invalid argument");
        if (EntriesFor(size, entry.GranularityBits, geometry.ClusterBits) != entry.TableSize)
        {
            throw new Qcow2Exception(image, $"Could not read bitmap '{entry.Name}' from image: Invalid argument");
        }

        return table;
    }

    public static ulong[] Decode(ReadOnlySpan<byte> bytes)
    {
        var entries = new ulong[bytes.Length / 8];
        for (var i = 0; i < entries.Length; i++)
        {
            entries[i] = BinaryPrimitives.ReadUInt64BigEndian(bytes[(i * 8)..]);
        }

        return entries;
    }

    public static byte[] Encode(IReadOnlyList<ulong> entries, int paddedLength)
    {
        var bytes = new byte[paddedLength];
        for (var i = 0; i < entries.Count; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), entries[i]);
        }

        return bytes;
    }

    /// <summary>The serialized data of <paramref name="bitmap"/>: <see cref="DataBytes"/> bytes, bits past its length zero.</summary>
    public static byte[] Serialize(DirtyBitmap bitmap)
    {
        var shift = BitOperations.Log2((ulong)bitmap.Granularity);
        var data = new byte[DataBytes(bitmap.Length, shift)];
        foreach (var area in bitmap.EnumerateDirtyAreas())
        {
            var first = area.Offset >> shift;
            var end = (area.Offset + area.Length + bitmap.Granularity - 1) >> shift;
            SetBits(data, first, end);
        }

        return data;
    }

    /// <summary>Marks in <paramref name="bitmap"/> (which must be clean) every chunk whose bit is set in <paramref name="data"/>.</summary>
    public static void Deserialize(ReadOnlySpan<byte> data, DirtyBitmap bitmap)
    {
        var shift = BitOperations.Log2((ulong)bitmap.Granularity);
        var chunks = (bitmap.Length + bitmap.Granularity - 1) >> shift;
        var chunk = 0L;
        while (chunk < chunks)
        {
            var start = NextBit(data, chunk, chunks, set: true);
            if (start >= chunks)
            {
                break;
            }

            chunk = NextBit(data, start, chunks, set: false);
            bitmap.SetDirty(start << shift, Math.Min(bitmap.Length, chunk << shift) - (start << shift));
        }
    }

    static void SetBits(Span<byte> data, long first, long end)
    {
        for (var bit = first; bit < end; bit++)
        {
            if ((bit & 7) == 0 && end - bit >= 8)
            {
                // Whole bytes at a time through the middle of a long run.
                var bytes = (int)((end - bit) >> 3);
                data.Slice((int)(bit >> 3), bytes).Fill(0xff);
                bit += ((long)bytes << 3) - 1;
                continue;
            }

            data[(int)(bit >> 3)] |= (byte)(1 << (int)(bit & 7));
        }
    }

    /// <summary>The first bit from <paramref name="from"/> that is set (or clear), or <paramref name="limit"/>.</summary>
    static long NextBit(ReadOnlySpan<byte> data, long from, long limit, bool set)
    {
        var skip = set ? (byte)0 : (byte)0xff;
        for (var bit = from; bit < limit; bit++)
        {
            var b = data[(int)(bit >> 3)];
            if ((bit & 7) == 0 && b == skip)
            {
                bit += 7;
                continue;
            }

            if (((b >> (int)(bit & 7)) & 1) == (set ? 1 : 0))
            {
                return bit;
            }
        }

        return limit;
    }
}
