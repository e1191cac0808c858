using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Drivers.Qcow2;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// A folder of hostile qcow2 images, as recipes: each starts from a valid image with 512-byte clusters
/// (header at cluster 0, refcount table at 1, refcount block at 2, L1 table at 3) and breaks one thing.
/// <see cref="Recipe.Refusal"/> is QEMU 7.2's message when it refuses to open the image at all (null: it
/// opens read-only); <see cref="Recipe.WriteRefusal"/> is what an open for writing must say, where only
/// that is refused (tables pointing into other metadata, which a write would destroy).
/// </summary>
public static class HostileImages
{
    public const long Size = 1 << 20;
    const int Cluster = 512;
    const int ReftableOffset = Cluster;
    const int L1Offset = 3 * Cluster;

    public sealed record Recipe(string Name, string? Refusal, string? WriteRefusal, Func<byte[], byte[]> Break);

    const string Overlaps = "the image cannot be opened read/write";

    public static readonly Recipe[] All =
    [
        new("truncated header", "qcow2 header too short", null, b => b[..40]),
        new("bad magic", "Image is not in qcow2 format", null, b => Set32(b, 0, 0x514649fa)),
        new("version 4", "Unsupported qcow2 version 4", null, b => Set32(b, 4, 4)),
        new("cluster_bits 8", "Unsupported cluster size: 2^8", null, b => Set32(b, 20, 8)),
        new("cluster_bits 30", "Unsupported cluster size: 2^30", null, b => Set32(b, 20, 30)),
        new("refcount_order 7", "Reference count entry width too large; may not exceed 64 bits", null, b => Set32(b, 96, 7)),
        new("L1 table beyond the end of the file", null, null, b => Set64(b, 40, 1 << 20)),
        new("L1 table not cluster aligned", "Active L1 table offset invalid", null, b => Set64(b, 40, L1Offset + 8)),
        new("L1 table too small for the virtual size", "L1 table is too small", null, b => Set32(b, 36, 0)),
        new("L1 table over QEMU's 32 MiB limit", "Active L1 table too large", null, b => Set32(b, 36, 0x7fffffff)),
        new("L1 table overlapping the refcount table", null, Overlaps, b => Set64(b, 40, ReftableOffset)),
        new("refcount table beyond the end of the file", null, null, b => Set64(b, 48, 1L << 40)),
        new("refcount table of zero clusters", "Image does not contain a reference count table", null, b => Set32(b, 56, 0)),
        new("refcount table over QEMU's 8 MiB limit", "Reference count table too large", null, b => Set32(b, 56, 0x10000000)),
        new("L1 entry pointing into the refcount table", null, Overlaps, b => Set64(b, L1Offset, ReftableOffset | (1UL << 63))),
        new("L1 entry pointing at the L1 table itself", null, Overlaps, b => Set64(b, L1Offset + 16, L1Offset | (1UL << 63))),
        new("L1 entry beyond the end of the file", null, null, b => Set64(b, L1Offset + 8, (1UL << 30) | (1UL << 63))),
        new("L1 entry not cluster aligned", null, null, b => Set64(b, L1Offset, (4 * Cluster + 8) | (1UL << 63))),
        new("two L1 entries sharing an L2 table", null, Overlaps, b => Set64(Set64(Grow(b, 5), L1Offset, (4 * Cluster) | (1UL << 63)), L1Offset + 8, (4 * Cluster) | (1UL << 63))),
        new("refcount table entry pointing at the L1 table", null, Overlaps, b => Set64(b, ReftableOffset + 8, L1Offset)),
        new("unknown incompatible feature bit 10", "Unsupported qcow2 feature(s): Unknown incompatible feature: 400", null, b => Set64(b, 72, 1UL << 10)),
        new("external data file", "images with an external data file are not supported", null, b => Set64(b, 72, Qcow2Header.IncompatibleExternalData)),
        new("compression bit without a compression type", "qcow2: Compression type incompatible feature bit must not be set", null, b => Set64(b, 72, Qcow2Header.IncompatibleCompressionType)),
        new("header_length beyond the cluster", "qcow2 header exceeds cluster size", null, b => Set32(b, 100, 1024)),
        new("encrypted", "encrypted images are not supported (crypt_method 2)", null, b => Set32(b, 32, 2)),
        new("backing file name outside the first cluster", "Backing file name too long", null, b => Set32(Set64(b, 8, 500), 16, 100)),
        new("backing file name longer than 1023 bytes", "Backing file name too long", null, b => Set32(Set64(b, 8, 200), 16, 2000)),
        new("backing_file_offset with the top bit set", "Invalid backing file offset", null, b => Set64(b, 8, 1UL << 63)),
        new("header extension running past the header area", "Header extension too large", null, b => Set32(Set32(b, 112, 0x12345678), 116, 4096)),
        new("bitmaps extension of the wrong length", "bitmaps_ext: Invalid extension length", null, b => Set32(Set32(b, 112, Qcow2Header.ExtensionBitmaps), 116, 8)),
        new("more than 65,536 snapshots", "Snapshot table too large", null, b => Set32(b, 60, 65537)),
        new("snapshot entry with too much extra data", "Too much extra metadata in snapshot table entry 0", null,
            b => Set32(Set64(Set32(Grow(b, 5), 60, 1), 64, 4 * Cluster), 4 * Cluster + 36, 1025)),
    ];

    /// <summary>A valid image with 512-byte clusters, as bytes.</summary>
    public static byte[] Valid(string directory)
    {
        var path = Path.Combine(directory, $"valid-{Guid.NewGuid():N}.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = Size, ClusterSize = Cluster });
        var bytes = File.ReadAllBytes(path);
        File.Delete(path);

        // No header extensions (the feature name table fills most of a 512-byte header cluster): the
        // recipes put their own there.
        bytes.AsSpan(112, Cluster - 112).Clear();
        return bytes;
    }

    /// <summary>Writes the broken image for <paramref name="recipe"/> into <paramref name="directory"/>; returns its path.</summary>
    public static string Write(string directory, Recipe recipe)
    {
        var path = Path.Combine(directory, string.Concat(recipe.Name.Select(c => char.IsLetterOrDigit(c) ? c : '-')) + ".qcow2");
        File.WriteAllBytes(path, recipe.Break(Valid(directory)));
        return path;
    }

    static byte[] Set32(byte[] b, int offset, uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(offset), value);
        return b;
    }

    static byte[] Set64(byte[] b, int offset, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(offset), value);
        return b;
    }

    /// <summary>Appends zero clusters until the image has <paramref name="clusters"/>.</summary>
    static byte[] Grow(byte[] b, int clusters) => b.Length >= clusters * Cluster ? b : [.. b, .. new byte[clusters * Cluster - b.Length]];

    /// <summary>A qcow2 header naming a backing file, for the loop test.</summary>
    public static byte[] WithBacking(byte[] valid, string backing)
    {
        var name = Encoding.UTF8.GetBytes(backing);
        var offset = 400;
        name.CopyTo(valid, offset);
        Set64(valid, 8, (ulong)offset);
        Set32(valid, 16, (uint)name.Length);
        return valid;
    }
}
