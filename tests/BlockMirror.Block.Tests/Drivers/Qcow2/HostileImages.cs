using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Drivers.Qcow2;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// A folder of hostile qcow2 images, as recipes: each starts from a valid image with 512-byte clusters
/// (header at cluster 0, refcount table at 1, refcount block at 2, L1 table at 3) and breaks one thing.
/// <see cref="Field"/> is what the error must name.
/// </summary>
public static class HostileImages
{
    public const long Size = 1 << 20;
    const int Cluster = 512;
    const int ReftableOffset = Cluster;
    const int L1Offset = 3 * Cluster;

    public sealed record Recipe(string Name, string Field, Func<byte[], byte[]> Break);

    public static readonly Recipe[] All =
    [
        new("truncated header", "header", b => b[..40]),
        new("bad magic", "magic", b => Set32(b, 0, 0x514649fa)),
        new("version 4", "version", b => Set32(b, 4, 4)),
        new("cluster_bits 8", "cluster_bits", b => Set32(b, 20, 8)),
        new("cluster_bits 30", "cluster_bits", b => Set32(b, 20, 30)),
        new("refcount_order 7", "refcount_order", b => Set32(b, 96, 7)),
        new("L1 table beyond the end of the file", "l1_table_offset", b => Set64(b, 40, 1 << 20)),
        new("L1 table not cluster aligned", "l1_table_offset", b => Set64(b, 40, L1Offset + 8)),
        new("L1 table too small for the virtual size", "l1_size", b => Set32(b, 36, 1)),
        new("L1 table over QEMU's 32 MiB limit", "l1_size", b => Set32(b, 36, 0x7fffffff)),
        new("L1 table overlapping the refcount table", "l1_table_offset", b => Set64(b, 40, ReftableOffset)),
        new("refcount table beyond the end of the file", "refcount_table_offset", b => Set64(b, 48, 1L << 40)),
        new("refcount table of zero clusters", "refcount_table_clusters", b => Set32(b, 56, 0)),
        new("refcount table over QEMU's 8 MiB limit", "refcount_table_clusters", b => Set32(b, 56, 0x10000000)),
        new("L1 entry pointing into the refcount table", "L1 table entry 0", b => Set64(b, L1Offset, ReftableOffset | (1UL << 63))),
        new("L1 entry pointing at the L1 table itself", "L1 table entry 2", b => Set64(b, L1Offset + 16, L1Offset | (1UL << 63))),
        new("L1 entry beyond the end of the file", "L1 table entry 1", b => Set64(b, L1Offset + 8, (1UL << 30) | (1UL << 63))),
        new("L1 entry not cluster aligned", "L1 table entry 0", b => Set64(b, L1Offset, (4 * Cluster + 8) | (1UL << 63))),
        new("two L1 entries sharing an L2 table", "L1 table entry 1", b => Set64(Set64(Grow(b, 5), L1Offset, (4 * Cluster) | (1UL << 63)), L1Offset + 8, (4 * Cluster) | (1UL << 63))),
        new("refcount table entry pointing at the L1 table", "refcount table entry 1", b => Set64(b, ReftableOffset + 8, L1Offset)),
        new("refcount table entry with reserved bits", "refcount table entry 0", b => Set64(b, ReftableOffset, 2 * Cluster + 1)),
        new("unknown incompatible feature bit 10", "incompatible_features", b => Set64(b, 72, 1UL << 10)),
        new("external data file", "incompatible_features", b => Set64(b, 72, Qcow2Header.IncompatibleExternalData)),
        new("zstd compression", "compression_type", b => Set64(b, 72, Qcow2Header.IncompatibleCompressionType)),
        new("header_length not a multiple of 8", "header_length", b => Set32(b, 100, 108)),
        new("header_length beyond the cluster", "header_length", b => Set32(b, 100, 1024)),
        new("encrypted", "crypt_method", b => Set32(b, 32, 2)),
        new("backing file name outside the first cluster", "backing_file_offset", b => Set32(Set64(b, 8, 500), 16, 100)),
        new("backing file name longer than 1023 bytes", "backing_file_size", b => Set32(Set64(b, 8, 200), 16, 2000)),
        new("header extension running past the header area", "header extension", b => Set32(Set32(b, 112, 0x12345678), 116, 4096)),
        new("snapshot table beyond the end of the file", "snapshots_offset", b => Set64(Set32(b, 60, 1), 64, 1L << 40)),
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
