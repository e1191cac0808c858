using System.Buffers.Binary;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// The persistent bitmap directory (docs/interop/qcow2.txt, "Bitmap directory"), checked at open as QEMU
/// checks it when it loads the bitmaps (qcow2-bitmap.c, bitmap_list_load and check_dir_entry): an image whose
/// directory QEMU refuses is refused here with QEMU's message. The bitmaps themselves are kept byte for byte,
/// not used.
/// <code>
///  0 bitmap_table_offset (8)   8 bitmap_table_size (4)   12 flags (4)   16 type (1)   17 granularity_bits (1)
/// 18 name_size (2)   20 extra_data_size (4)   24 extra data, then the name; each entry padded to 8 bytes.
/// </code>
/// </summary>
internal static class Qcow2BitmapDirectory
{
    const int EntryLength = 24;
    const int MaxNameLength = 1023;
    const uint MaxTableEntries = 0x8000000;
    const ulong MaxBitmapBytes = 0x20000000;
    const int MinGranularityBits = 9;
    const int MaxGranularityBits = 31;
    const uint KnownFlags = 0x3; // in_use, auto
    const byte DirtyTrackingType = 1;

    /// <summary>Checks the directory the bitmaps extension names, when it names one (<see cref="Qcow2Header.Bitmaps"/>).</summary>
    public static async ValueTask CheckAsync(Func<long, Memory<byte>, CancellationToken, ValueTask> read, Qcow2Header header, string name,
        CancellationToken cancellationToken)
    {
        if (header.Bitmaps is not { } bitmaps)
        {
            return;
        }

        if (bitmaps.DirectorySize == 0)
        {
            throw new Qcow2Exception(name, "Requested bitmap directory size is zero");
        }

        var directory = new byte[bitmaps.DirectorySize];
        await read(bitmaps.DirectoryOffset, directory, cancellationToken).ConfigureAwait(false);
        if (Check(directory, bitmaps.Count, header.ClusterSize) is { } fault)
        {
            throw new Qcow2Exception(name, fault);
        }
    }

    /// <summary>QEMU's message for the first fault of the directory, or null.</summary>
    static string? Check(ReadOnlySpan<byte> directory, int expected, int clusterSize)
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

            var invalid = (ulong)tableSize * (ulong)clusterSize > MaxBitmapBytes || tableSize > MaxTableEntries ||
                granularityBits is > MaxGranularityBits or < MinGranularityBits || (flags & ~KnownFlags) != 0 ||
                nameSize > MaxNameLength || type != DirtyTrackingType;
            if (invalid)
            {
                var bitmapName = System.Text.Encoding.UTF8.GetString(entry.Slice(EntryLength + (int)extraSize, nameSize));
                return $"Bitmap '{bitmapName}' doesn't satisfy the constraints";
            }

            position = (int)next;
        }

        return found != expected ? "Less bitmaps found than specified in header extension" : null;
    }
}
