using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// The qcow2 header (docs/interop/qcow2.txt in qemu/qemu): the fixed fields, the header extensions, and
/// the backing file name, all inside the first cluster. Parsing (Qcow2Header.Parse.cs) checks them as QEMU
/// 7.2 does, with QEMU's messages; extensions this code does not interpret are kept byte for byte.
/// </summary>
/// <remarks>
/// <code>
///  0  magic "QFI\xfb"          4  version (2|3)             8  backing_file_offset   16 backing_file_size
/// 20  cluster_bits            24  size (virtual)           32  crypt_method          36 l1_size
/// 40  l1_table_offset         48  refcount_table_offset    56  refcount_table_clusters
/// 60  nb_snapshots            64  snapshots_offset         -- 72: end of a version 2 header --
/// 72  incompatible_features   80  compatible_features      88  autoclear_features
/// 96  refcount_order         100  header_length           104  compression_type (optional)
/// then extensions: { u32 type, u32 length, data, pad to 8 } ... { 0, 0 }, then the backing file name.
/// </code>
/// All numbers are big-endian.
/// </remarks>
public sealed partial class Qcow2Header
{
    public const uint Magic = 0x514649fb;
    public const int Version2HeaderLength = 72;
    public const int Version3MinHeaderLength = 104;

    /// <summary>512 B to 2 MiB clusters, QEMU's limits.</summary>
    public const int MinClusterBits = 9;
    public const int MaxClusterBits = 21;

    /// <summary>With extended L2 entries a cluster holds 32 subclusters of at least 512 B.</summary>
    public const int MinClusterBitsExtendedL2 = 14;

    public const int MaxBackingFileNameLength = 1023;

    /// <summary>QEMU's implementation limit on the active L1 table (QCOW_MAX_L1_SIZE), in bytes.</summary>
    public const long MaxL1TableBytes = 32L << 20;

    /// <summary>QEMU's implementation limit on the refcount table (QCOW_MAX_REFTABLE_SIZE), in bytes.</summary>
    public const long MaxRefcountTableBytes = 8L << 20;

    public const int MaxRefcountOrder = 6;

    public const uint ExtensionEnd = 0x00000000;
    public const uint ExtensionBackingFormat = 0xe2792aca;
    public const uint ExtensionFeatureNameTable = 0x6803f857;
    public const uint ExtensionBitmaps = 0x23852875;
    public const uint ExtensionFullDiskEncryption = 0x0537be77;
    public const uint ExtensionExternalDataFile = 0x44415441;

    public const ulong IncompatibleDirty = 1UL << 0;
    public const ulong IncompatibleCorrupt = 1UL << 1;
    public const ulong IncompatibleExternalData = 1UL << 2;
    public const ulong IncompatibleCompressionType = 1UL << 3;
    public const ulong IncompatibleExtendedL2 = 1UL << 4;
    public const ulong IncompatibleKnown = IncompatibleDirty | IncompatibleCorrupt | IncompatibleExternalData | IncompatibleCompressionType | IncompatibleExtendedL2;

    public const ulong CompatibleLazyRefcounts = 1UL << 0;

    public const ulong AutoclearBitmaps = 1UL << 0;
    public const ulong AutoclearRawExternalData = 1UL << 1;

    public int Version { get; set; } = 3;

    public long BackingFileOffset { get; set; }

    public int BackingFileSize { get; set; }

    public int ClusterBits { get; set; } = 16;

    /// <summary>Virtual disk size in bytes.</summary>
    public long Size { get; set; }

    public int CryptMethod { get; set; }

    /// <summary>Entries in the active L1 table.</summary>
    public int L1Size { get; set; }

    public long L1TableOffset { get; set; }

    public long RefcountTableOffset { get; set; }

    public int RefcountTableClusters { get; set; }

    public int NbSnapshots { get; set; }

    public long SnapshotsOffset { get; set; }

    public ulong IncompatibleFeatures { get; set; }

    public ulong CompatibleFeatures { get; set; }

    public ulong AutoclearFeatures { get; set; }

    /// <summary>refcount_bits = 1 &lt;&lt; RefcountOrder; version 2 images are always 4 (16-bit refcounts).</summary>
    public int RefcountOrder { get; set; } = 4;

    /// <summary>Length of the fixed header: 72 for version 2, at least 104 for version 3 (the spec asks for a multiple of 8; QEMU does not check it).</summary>
    public int HeaderLength { get; set; } = Version3MinHeaderLength;

    /// <summary>0 = zlib (deflate), 1 = zstd.</summary>
    public byte CompressionType { get; set; }

    /// <summary>Bytes of the fixed header past the fields we know (from byte 105 to header_length), kept as they were.</summary>
    public byte[] UnknownHeaderFields { get; set; } = [];

    /// <summary>The backing file name, or null for none.</summary>
    public string? BackingFile { get; set; }

    /// <summary>Every header extension except the end marker, in file order (the backing format one included).</summary>
    public List<Qcow2HeaderExtension> Extensions { get; } = [];

    public int ClusterSize => 1 << ClusterBits;

    public bool HasExtendedL2 => (IncompatibleFeatures & IncompatibleExtendedL2) != 0;

    /// <summary>Bytes per L2 entry: 8, or 16 with extended L2 entries.</summary>
    public int L2EntrySize => HasExtendedL2 ? 16 : 8;

    /// <summary>Entries in one L2 table (one cluster).</summary>
    public int L2Entries => ClusterSize / L2EntrySize;

    public int RefcountBits => 1 << RefcountOrder;

    /// <summary>Entries in one refcount block (one cluster).</summary>
    public long RefcountBlockEntries => (long)ClusterSize * 8 / RefcountBits;

    /// <summary>The backing file's format from its extension, or null.</summary>
    public string? BackingFormat
    {
        get => Extensions.FindLast(e => e.Type == ExtensionBackingFormat) is { } e ? Encoding.UTF8.GetString(e.Data) : null;
        set
        {
            var index = Extensions.FindIndex(e => e.Type == ExtensionBackingFormat);
            if (value is null)
            {
                if (index >= 0)
                {
                    Extensions.RemoveAt(index);
                }

                return;
            }

            var extension = new Qcow2HeaderExtension(ExtensionBackingFormat, Encoding.UTF8.GetBytes(value));
            if (index >= 0)
            {
                Extensions[index] = extension;
            }
            else
            {
                Extensions.Insert(0, extension);
            }
        }
    }

    /// <summary>Number of L1 entries needed to map a virtual size.</summary>
    public long L1EntriesFor(long size)
    {
        var clusters = (size + ClusterSize - 1) >> ClusterBits;
        return (clusters + L2Entries - 1) / L2Entries;
    }

    /// <summary>Names for feature bits from the image's feature name table, e.g. "dirty bit".</summary>
    public string? FeatureName(int type, int bit)
    {
        if (Extensions.Find(e => e.Type == ExtensionFeatureNameTable) is not { } table)
        {
            return null;
        }

        for (var i = 0; i + 48 <= table.Data.Length; i += 48)
        {
            if (table.Data[i] == type && table.Data[i + 1] == bit)
            {
                var name = table.Data.AsSpan(i + 2, 46);
                var end = name.IndexOf((byte)0);
                return Encoding.UTF8.GetString(end < 0 ? name : name[..end]);
            }
        }

        return null;
    }

    /// <summary>
    /// Writes the header, its extensions and the backing file name into a buffer of one cluster (the caller
    /// writes it at offset 0). Throws when they do not fit. Updates <see cref="BackingFileOffset"/> and
    /// <see cref="BackingFileSize"/>.
    /// </summary>
    public byte[] Serialize()
    {
        var buffer = new byte[ClusterSize];
        var span = buffer.AsSpan();
        var headerLength = Version == 2 ? Version2HeaderLength : Math.Max(HeaderLength, Version3MinHeaderLength);
        var position = headerLength;
        foreach (var extension in Extensions)
        {
            var padded = (extension.Data.Length + 7) & ~7;
            if (position + 8 + padded + 8 > ClusterSize)
            {
                throw new InvalidOperationException($"qcow2 header extensions do not fit in one {ClusterSize}-byte cluster");
            }

            BinaryPrimitives.WriteUInt32BigEndian(span[position..], extension.Type);
            BinaryPrimitives.WriteUInt32BigEndian(span[(position + 4)..], (uint)extension.Data.Length);
            extension.Data.CopyTo(span[(position + 8)..]);
            position += 8 + padded;
        }

        // End marker.
        position += 8;
        if (BackingFile is { } backing)
        {
            var name = Encoding.UTF8.GetBytes(backing);
            if (name.Length > MaxBackingFileNameLength || position + name.Length > ClusterSize)
            {
                throw new InvalidOperationException($"backing file name '{backing}' does not fit in the header cluster");
            }

            name.CopyTo(span[position..]);
            BackingFileOffset = position;
            BackingFileSize = name.Length;
        }
        else
        {
            BackingFileOffset = 0;
            BackingFileSize = 0;
        }

        BinaryPrimitives.WriteUInt32BigEndian(span, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(span[4..], (uint)Version);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], (ulong)BackingFileOffset);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], (uint)BackingFileSize);
        BinaryPrimitives.WriteUInt32BigEndian(span[20..], (uint)ClusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(span[24..], (ulong)Size);
        BinaryPrimitives.WriteUInt32BigEndian(span[32..], (uint)CryptMethod);
        BinaryPrimitives.WriteUInt32BigEndian(span[36..], (uint)L1Size);
        BinaryPrimitives.WriteUInt64BigEndian(span[40..], (ulong)L1TableOffset);
        BinaryPrimitives.WriteUInt64BigEndian(span[48..], (ulong)RefcountTableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(span[56..], (uint)RefcountTableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(span[60..], (uint)NbSnapshots);
        BinaryPrimitives.WriteUInt64BigEndian(span[64..], (ulong)SnapshotsOffset);
        if (Version == 3)
        {
            BinaryPrimitives.WriteUInt64BigEndian(span[72..], IncompatibleFeatures);
            BinaryPrimitives.WriteUInt64BigEndian(span[80..], CompatibleFeatures);
            BinaryPrimitives.WriteUInt64BigEndian(span[88..], AutoclearFeatures);
            BinaryPrimitives.WriteUInt32BigEndian(span[96..], (uint)RefcountOrder);
            BinaryPrimitives.WriteUInt32BigEndian(span[100..], (uint)headerLength);
            if (headerLength > 104)
            {
                span[104] = CompressionType;
                UnknownHeaderFields.AsSpan(0, Math.Min(UnknownHeaderFields.Length, headerLength - 105)).CopyTo(span[105..]);
            }
        }

        return buffer;
    }
}

/// <summary>One header extension: its type and its data (without padding).</summary>
public sealed record Qcow2HeaderExtension(uint Type, byte[] Data);

/// <summary>
/// A qcow2 image that cannot be opened. The message is QEMU's own for the same fault (qemu-img prefixes it
/// with "Could not open 'FILE': ", as <see cref="ImageFiles"/> does); <see cref="Image"/> names the file.
/// Nothing was written.
/// </summary>
public sealed class Qcow2Exception(string image, string message, BlockErrno errno = BlockErrno.EINVAL) : IOException(message)
{
    public string Image { get; } = image;

    public BlockErrno Errno { get; } = errno;
}
