using System.Buffers.Binary;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Hostile;

/// <summary>
/// A corpus of hostile qcow2 images, one row per damage: each starts from the same valid image that the real
/// qemu-img makes (4 MiB, 64 KiB clusters, data at 0 and at 2 MiB, the feature name table as its only
/// header extension) and breaks one header field, table, table entry or extension. Where the damage lands
/// is read from the valid image's own header, not assumed.
/// </summary>
static class HostileQcow2Corpus
{
    /// <summary>Where the valid image keeps its metadata (offsets in the file).</summary>
    public sealed record Layout(long Reftable, long Refblock, long L1, long L2, long Data, int FirstExtension);

    /// <summary>
    /// One damage. <paramref name="OurRefusal"/> is set where BlockMirror deliberately refuses an image that
    /// qemu-img opens, or refuses in other words (README, "Deliberate differences"): the commands named in
    /// <paramref name="In"/> (all when null) must then refuse it with that text, and QEMU is not asked.
    /// </summary>
    public sealed record Damage(string Name, Action<byte[], Layout> Apply, string? OurRefusal = null, string[]? In = null)
    {
        public bool DiffersIn(string command) => OurRefusal is not null && (In is null || In.Contains(command));
    }

    /// <summary>A backing image left dirty or marked corrupt is not reopened read-write for a commit into it.</summary>
    static readonly string[] Commit = ["commit"];

    /// <summary>Tables that point into other metadata are refused for writing (a write through them would destroy it).</summary>
    static readonly string[] Resize = ["resize"];

    /// <summary>A version 1 header probes as qcow (version 1), a format this build does not have.</summary>
    static readonly string[] Probing = ["info", "map", "check", "compare", "mirror", "resize"];

    const string WriteRefusal = "the image cannot be opened read/write";

    const uint FeatureTableType = 0x6803f857;
    const uint BackingFormatType = 0xe2792aca;
    const uint BitmapsType = 0x23852875;
    const uint CryptoType = 0x0537be77;
    const uint DataFileType = 0x44415441;
    const ulong Copied = 1UL << 63;

    public static readonly Damage[] All =
    [
        // The fixed header fields, in file order.
        new("version 1", (b, _) => Set32(b, 4, 1), "qcow", Probing),
        new("version 4", (b, _) => Set32(b, 4, 4)),
        new("version 2 over a version 3 header", (b, _) => Set32(b, 4, 2)),
        new("backing_file_offset with the top bit set", (b, _) => Set64(b, 8, 1UL << 63)),
        new("backing_file_offset past the first cluster", (b, _) => Set32(Set64(b, 8, 0x10001), 16, 4)),
        new("backing_file_size over 1023", (b, _) => Set32(Set64(b, 8, 0x1000), 16, 2000)),
        new("backing file name running past the first cluster", (b, _) => Set32(Set64(b, 8, 0xfff0), 16, 100)),
        new("cluster_bits 8", (b, _) => Set32(b, 20, 8)),
        new("cluster_bits 22", (b, _) => Set32(b, 20, 22)),
        new("cluster_bits 0xffffffff", (b, _) => Set32(b, 20, uint.MaxValue)),
        new("size of 2^62", (b, _) => Set64(b, 24, 1UL << 62)),
        new("size with the top bit set", (b, _) => Set64(b, 24, 1UL << 63)),
        new("size too large for the L1 table", (b, _) => Set64(b, 24, 1UL << 40)),
        new("crypt_method 1 (AES)", (b, _) => Set32(b, 32, 1), "encrypted images are not supported (crypt_method 1)"),
        new("crypt_method 2 (LUKS)", (b, _) => Set32(b, 32, 2), "encrypted images are not supported (crypt_method 2)"),
        new("crypt_method 3", (b, _) => Set32(b, 32, 3)),
        new("l1_size over 32 MiB", (b, _) => Set32(b, 36, int.MaxValue)),
        new("l1_size 0", (b, _) => Set32(b, 36, 0)),
        new("l1_table_offset unaligned", (b, l) => Set64(b, 40, (ulong)l.L1 + 1)),
        new("l1_table_offset past the end of the file", (b, _) => Set64(b, 40, 16 << 20)),
        new("l1_table_offset with the top bit set", (b, l) => Set64(b, 40, (1UL << 63) | (ulong)l.L1)),
        new("refcount_table_offset unaligned", (b, l) => Set64(b, 48, (ulong)l.Reftable + 8)),
        new("refcount_table_offset with the top bit set", (b, l) => Set64(b, 48, (1UL << 63) | (ulong)l.Reftable)),
        new("refcount_table_clusters 0", (b, _) => Set32(b, 56, 0)),
        new("refcount_table_clusters over 8 MiB", (b, _) => Set32(b, 56, 0x10000000)),
        new("nb_snapshots over 65,536", (b, _) => Set32(b, 60, 65537)),
        new("snapshots_offset unaligned", (b, _) => Set64(Set32(b, 60, 1), 64, 0x10001)),
        new("snapshot table over data (too much extra data)", (b, l) => Set64(Set32(b, 60, 1), 64, (ulong)l.Data)),
        new("snapshot table past the end of the file", (b, _) => Set64(Set32(b, 60, 1), 64, 16 << 20)),
        new("unknown incompatible feature bit 5", (b, _) => Set64(b, 72, 1UL << 5)),
        new("unknown incompatible feature bit 63", (b, _) => Set64(b, 72, 1UL << 63)),
        new("incompatible bit: corrupt", (b, _) => Set64(b, 72, 2), "is marked corrupt and refuses writes", Commit),
        new("incompatible bit: dirty", (b, _) => Set64(b, 72, 1), "the image was left dirty by another writer", Commit),
        new("incompatible bit: external data file", (b, _) => Set64(b, 72, 4), "images with an external data file are not supported"),
        new("incompatible bit: compression type without a type", (b, _) => Set64(b, 72, 8)),
        new("compression type 2", (b, _) => b[104] = 2),
        new("compression type zstd without its bit", (b, _) => b[104] = 1),
        new("unknown compatible features", (b, _) => Set64(b, 80, 0xff00)),
        new("unknown autoclear features", (b, _) => Set64(b, 88, 0xff00)),
        new("refcount_order 7", (b, _) => Set32(b, 96, 7)),
        new("header_length 100", (b, _) => Set32(b, 100, 100)),
        new("header_length 108", (b, _) => Set32(b, 100, 108)),
        new("header_length over the cluster", (b, _) => Set32(b, 100, 0x20000)),

        // Header extensions (each replaces the feature name table).
        new("extension running past the cluster", (b, l) => Set32(b, l.FirstExtension + 4, 0x10000)),
        new("unknown extension", (b, l) => Extension(b, l, 0x12345678, "hello"u8)),
        new("backing format extension of 20 bytes", (b, l) => Extension(b, l, BackingFormatType, new byte[20])),
        new("bitmaps extension of the wrong length", (b, l) => Extension(b, l, BitmapsType, new byte[8], autoclear: true)),
        new("bitmaps extension of the wrong length, stale", (b, l) => Extension(b, l, BitmapsType, new byte[8])),
        new("bitmaps extension with zero bitmaps", (b, l) => Extension(b, l, BitmapsType, Bitmaps(0, 0, 64, l.Data), autoclear: true)),
        new("bitmaps extension with a reserved field", (b, l) => Extension(b, l, BitmapsType, Bitmaps(1, 1, 64, l.Data), autoclear: true)),
        new("bitmaps extension with 70,000 bitmaps", (b, l) => Extension(b, l, BitmapsType, Bitmaps(70000, 0, 64, l.Data), autoclear: true)),
        new("bitmaps extension with an unaligned directory", (b, l) => Extension(b, l, BitmapsType, Bitmaps(1, 0, 64, l.Data + 1), autoclear: true)),
        new("bitmaps extension over data (a broken directory)", (b, l) => Extension(b, l, BitmapsType, Bitmaps(1, 0, 64, l.Data), autoclear: true)),
        new("bitmaps extension over an empty directory", (b, l) => Extension(b, l, BitmapsType, Bitmaps(1, 0, 64, 16 << 20), autoclear: true)),
        new("bitmaps extension with a 1 GiB directory", (b, l) => Extension(b, l, BitmapsType, Bitmaps(1, 0, 1 << 30, l.Data), autoclear: true)),
        // One bitmap, its directory over the first data cluster, its table where the damage wants it. The L2 table's
        // first entry has the copied flag, bit 63: as a bitmap table entry, an offset past the 56 bits allowed.
        new("bitmap table entry past the 56-bit offset range", (b, l) => OneBitmap(b, l, l.L2, 1, flags: 2)),
        new("bitmap table of the wrong size", (b, l) => OneBitmap(b, l, l.Data, 2, flags: 0)),
        new("bitmap in use with a table entry past the offset range", (b, l) => OneBitmap(b, l, l.L2, 1, flags: 3)),
        new("encryption extension without encryption", (b, l) => Extension(b, l, CryptoType, new byte[16])),
        new("data file extension without its bit", (b, l) => Extension(b, l, DataFileType, "x.raw"u8)),

        // Table entries.
        new("L1 entry with reserved bits", (b, l) => Set64(b, l.L1, Copied | (ulong)l.L2 | 2)),
        new("L1 entry unaligned", (b, l) => Set64(b, l.L1, Copied | (ulong)l.L2 + 0x200)),
        new("L1 entry past the end of the file", (b, l) => Set64(b, l.L1, Copied | (16 << 20))),
        new("L1 entry pointing at the header", (b, l) => Set64(b, l.L1, Copied)),
        new("L1 entry pointing at the refcount table", (b, l) => Set64(b, l.L1, Copied | (ulong)l.Reftable), WriteRefusal, Resize),
        new("L2 entry unaligned", (b, l) => Set64(b, l.L2, Copied | (ulong)l.Data + 0x200)),
        new("L2 entry with reserved bits", (b, l) => Set64(b, l.L2, Copied | (ulong)l.Data | 0x100)),
        new("L2 entry past the end of the file", (b, l) => Set64(b, l.L2, Copied | (16 << 20))),
        new("refcount table entry unaligned", (b, l) => Set64(b, l.Reftable, (ulong)l.Refblock + 0x200)),
        new("refcount table entry past the end of the file", (b, l) => Set64(b, l.Reftable, 16 << 20)),
        new("refcount table entry 0", (b, l) => Set64(b, l.Reftable, 0)),
        new("refcount of a data cluster 0", (b, l) => Set16(b, l.Refblock + 2 * (l.Data >> 16), 0)),
        new("refcount of a data cluster 5", (b, l) => Set16(b, l.Refblock + 2 * (l.Data >> 16), 5)),
    ];

    /// <summary>The valid image, made by qemu-img and written by qemu-io; its bytes and where its metadata is.</summary>
    public static async Task<(byte[] Bytes, Layout Layout)> ValidAsync(string directory)
    {
        var path = Path.Combine(directory, "valid.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", path, "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 128k", "-c", "write -P 2 2M 64k", path);
        var bytes = await File.ReadAllBytesAsync(path);
        File.Delete(path);
        var l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(40));
        var reftable = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(48));
        var l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)l1)) & 0x00ff_ffff_ffff_fe00UL);
        var refblock = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)reftable));
        var data = (long)(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)l2)) & 0x00ff_ffff_ffff_fe00UL);
        var firstExtension = (int)BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(100));
        Assert.Equal(FeatureTableType, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(firstExtension)));
        return (bytes, new Layout(reftable, refblock, l1, l2, data, firstExtension));
    }

    /// <summary>Writes the valid image with <paramref name="damage"/> applied to <paramref name="path"/>.</summary>
    public static void Write(string path, byte[] valid, Layout layout, Damage damage)
    {
        var bytes = valid.ToArray();
        damage.Apply(bytes, layout);
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>Puts one extension (and the end marker) where the feature name table was; optionally sets the bitmaps autoclear bit.</summary>
    static void Extension(byte[] b, Layout l, uint type, ReadOnlySpan<byte> data, bool autoclear = false)
    {
        var at = l.FirstExtension;
        var padded = (data.Length + 7) & ~7;
        b.AsSpan(at, 8 + padded + 8).Clear();
        Set32(b, at, type);
        Set32(b, at + 4, (uint)data.Length);
        data.CopyTo(b.AsSpan(at + 8));
        if (autoclear)
        {
            Set64(b, 88, 1);
        }
    }

    /// <summary>
    /// A bitmaps extension naming one bitmap "b0" (64 KiB granularity) whose directory is at the first data cluster:
    /// its table at <paramref name="table"/> with <paramref name="size"/> entries, and its flags (1 in use, 2 auto).
    /// </summary>
    static void OneBitmap(byte[] b, Layout l, long table, uint size, uint flags)
    {
        var entry = b.AsSpan((int)l.Data, 32);
        entry.Clear();
        BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)table);
        BinaryPrimitives.WriteUInt32BigEndian(entry[8..], size);
        BinaryPrimitives.WriteUInt32BigEndian(entry[12..], flags);
        entry[16] = 1;
        entry[17] = 16;
        BinaryPrimitives.WriteUInt16BigEndian(entry[18..], 2);
        "b0"u8.CopyTo(entry[24..]);
        Extension(b, l, BitmapsType, Bitmaps(1, 0, 32, l.Data), autoclear: true);
    }

    /// <summary>The bitmaps extension's body: nb_bitmaps, reserved, directory size, directory offset.</summary>
    static byte[] Bitmaps(uint count, uint reserved, ulong directorySize, long directoryOffset)
    {
        var body = new byte[24];
        BinaryPrimitives.WriteUInt32BigEndian(body, count);
        BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(4), reserved);
        BinaryPrimitives.WriteUInt64BigEndian(body.AsSpan(8), directorySize);
        BinaryPrimitives.WriteUInt64BigEndian(body.AsSpan(16), (ulong)directoryOffset);
        return body;
    }

    static byte[] Set16(byte[] b, long offset, ushort value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan((int)offset), value);
        return b;
    }

    static byte[] Set32(byte[] b, long offset, uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan((int)offset), value);
        return b;
    }

    static byte[] Set64(byte[] b, long offset, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan((int)offset), value);
        return b;
    }
}
