using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// The persistent bitmap directory (docs/interop/qcow2.txt, "Bitmap directory"), read and checked at open as
/// QEMU reads and checks it when it loads the bitmaps (qcow2-bitmap.c, bitmap_list_load and check_dir_entry):
/// an image whose directory QEMU refuses is refused here with QEMU's message. Also written (<see cref="Encode"/>)
/// when the bitmaps are stored.
/// <code>
///  0 bitmap_table_offset (8)   8 bitmap_table_size (4)   12 flags (4)   16 type (1)   17 granularity_bits (1)
/// 18 name_size (2)   20 extra_data_size (4)   24 extra data, then the name; each entry padded to 8 bytes.
/// </code>
/// </summary>
internal static class Qcow2BitmapDirectory
{
    const int EntryLength = 24;

    /// <summary>QEMU's BME_MAX_NAME_SIZE.</summary>
    public const int MaxNameLength = 1023;

    /// <summary>QEMU's BME_MAX_TABLE_SIZE: entries in one bitmap table.</summary>
    public const uint MaxTableEntries = 0x8000000;

    /// <summary>QEMU's BME_MAX_PHYS_SIZE: bytes of one bitmap's data, a bound on its memory.</summary>
    public const ulong MaxBitmapBytes = 0x20000000;

    public const int MinGranularityBits = 9;
    public const int MaxGranularityBits = 31;
    const uint KnownFlags = Qcow2BitmapEntry.FlagInUse | Qcow2BitmapEntry.FlagAuto;
    const byte DirtyTrackingType = 1;

    /// <summary>
    /// What QEMU warns at open when the image has a bitmaps extension whose autoclear bit a program without bitmap
    /// support cleared: the bitmaps are ignored, and their clusters are leaks. None otherwise.
    /// </summary>
    public static IEnumerable<string> StaleWarnings(Qcow2Header header)
    {
        if (header.Bitmaps is null && header.Extensions.Exists(e => e.Type == Qcow2Header.ExtensionBitmaps))
        {
            yield return "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent; " +
                "some clusters may be leaked, run 'check -r leaks' on the image file to fix";
        }
    }

    /// <summary>
    /// Reads and checks the directory the bitmaps extension names (<see cref="Qcow2Header.Bitmaps"/>); none when
    /// there is no valid extension. Throws <see cref="Qcow2Exception"/> with QEMU's message for a broken one.
    /// </summary>
    public static async ValueTask<IReadOnlyList<Qcow2BitmapEntry>> LoadAsync(Func<long, Memory<byte>, CancellationToken, ValueTask> read,
        Qcow2Header header, string name, CancellationToken cancellationToken)
    {
        if (header.Bitmaps is not { } bitmaps)
        {
            return [];
        }

        if (bitmaps.DirectorySize == 0)
        {
            throw new Qcow2Exception(name, "Requested bitmap directory size is zero");
        }

        var directory = new byte[bitmaps.DirectorySize];
        await read(bitmaps.DirectoryOffset, directory, cancellationToken).ConfigureAwait(false);
        var entries = new List<Qcow2BitmapEntry>(bitmaps.Count);
        if (Parse(directory, bitmaps.Count, header.ClusterSize, header.Size, entries) is { } fault)
        {
            throw new Qcow2Exception(name, fault);
        }

        return entries;
    }

    /// <summary>Bytes the directory entry of a bitmap with this name takes (QEMU's calc_dir_entry_size).</summary>
    public static int EntrySize(string bitmapName) => (EntryLength + Encoding.UTF8.GetByteCount(bitmapName) + 7) & ~7;

    /// <summary>The directory for <paramref name="entries"/>, in their order (padding zeroed).</summary>
    public static byte[] Encode(IReadOnlyList<Qcow2BitmapEntry> entries)
    {
        var directory = new byte[entries.Sum(e => EntrySize(e.Name))];
        var span = directory.AsSpan();
        foreach (var entry in entries)
        {
            var nameBytes = Encoding.UTF8.GetBytes(entry.Name);
            BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)entry.TableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(span[8..], (uint)entry.TableSize);
            BinaryPrimitives.WriteUInt32BigEndian(span[12..], entry.Flags);
            span[16] = DirtyTrackingType;
            span[17] = (byte)entry.GranularityBits;
            BinaryPrimitives.WriteUInt16BigEndian(span[18..], (ushort)nameBytes.Length);
            nameBytes.CopyTo(span[EntryLength..]);
            span = span[EntrySize(entry.Name)..];
        }

        return directory;
    }

    /// <summary>
    /// Decodes the directory into <paramref name="entries"/>; returns QEMU's message for its first fault, or null.
    /// <paramref name="expected"/> is the count the header extension gives.
    /// </summary>
    public static string? Parse(ReadOnlySpan<byte> directory, int expected, int clusterSize, long virtualSize, List<Qcow2BitmapEntry> entries)
    {
        const string Broken = "Broken bitmap directory";
        var position = 0;
        var found = 0;
        while (position < directory.Length)
        {
            if (position + EntryLength > directory.Length)
            {
                return Broken;
            }

            if (++found > expected)
            {
                return "More bitmaps found than specified in header extension";
            }

            var entry = directory[position..];
            var tableOffset = BinaryPrimitives.ReadUInt64BigEndian(entry);
            var tableSize = BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            var flags = BinaryPrimitives.ReadUInt32BigEndian(entry[12..]);
            var type = entry[16];
            var granularityBits = entry[17];
            var nameSize = BinaryPrimitives.ReadUInt16BigEndian(entry[18..]);
            var extraSize = BinaryPrimitives.ReadUInt32BigEndian(entry[20..]);
            var next = position + (long)((EntryLength + extraSize + nameSize + 7) & ~7L);
            if (next > directory.Length)
            {
                return Broken;
            }

            if (extraSize != 0)
            {
                return "Bitmap extra data is not supported";
            }

            var bitmapName = Encoding.UTF8.GetString(entry.Slice(EntryLength, nameSize));
            if (!SatisfiesConstraints(tableOffset, tableSize, flags, type, granularityBits, nameSize, clusterSize, virtualSize))
            {
                return $"Bitmap '{bitmapName}' doesn't satisfy the constraints";
            }

            entries.Add(new Qcow2BitmapEntry(bitmapName, (long)tableOffset, (int)tableSize, flags, granularityBits));
            position = (int)next;
        }

        return found != expected ? "Less bitmaps found than specified in header extension" : null;
    }

    /// <summary>QEMU's check_dir_entry; a bitmap not marked in use must also have a table large enough for the disk.</summary>
    static bool SatisfiesConstraints(ulong tableOffset, uint tableSize, uint flags, byte type, byte granularityBits, ushort nameSize,
        int clusterSize, long virtualSize)
    {
        var valid = tableSize != 0 && tableOffset != 0 && tableOffset % (ulong)clusterSize == 0 && tableSize <= MaxTableEntries &&
            granularityBits is >= MinGranularityBits and <= MaxGranularityBits && (flags & ~KnownFlags) == 0 &&
            nameSize <= MaxNameLength && type == DirtyTrackingType;
        if (!valid)
        {
            return false;
        }

        var dataBytes = (ulong)tableSize * (ulong)clusterSize;
        if (dataBytes > MaxBitmapBytes)
        {
            return false;
        }

        // A bitmap left in use may be stale in size too (an image resized without it): QEMU accepts that.
        return (flags & Qcow2BitmapEntry.FlagInUse) != 0 || (ulong)virtualSize <= (dataBytes * 8) << granularityBits;
    }
}
