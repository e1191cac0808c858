using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

public sealed partial class Qcow2Header
{
    /// <summary>QEMU's QCOW_MAX_SNAPSHOTS: at most this many internal snapshots.</summary>
    public const int MaxSnapshots = 65536;

    /// <summary>Bytes of one snapshot table entry before its extra data and names (QCowSnapshotHeader).</summary>
    public const int SnapshotHeaderLength = 40;

    /// <summary>QEMU's QCOW2_MAX_BITMAPS and QCOW2_MAX_BITMAP_DIRECTORY_SIZE.</summary>
    public const int MaxBitmaps = 65535;

    public const long MaxBitmapDirectoryBytes = 1024L * MaxBitmaps;

    /// <summary>The bitmaps extension's fixed length: nb_bitmaps, reserved, directory size and offset.</summary>
    const int BitmapsExtensionLength = 24;

    /// <summary>QEMU keeps the backing format in a 16-byte buffer: a name must be shorter than that.</summary>
    const int BackingFormatBuffer = 16;

    const int LuksCryptMethod = 2;

    /// <summary>The bitmaps extension, when the image has one that the autoclear bit says is valid.</summary>
    public (int Count, long DirectorySize, long DirectoryOffset)? Bitmaps { get; private set; }

    /// <summary>
    /// Points the header at a new bitmap directory (or, with no bitmaps, drops the extension), and sets the
    /// autoclear bit that says the extension is valid (or clears it), as QEMU's qcow2_update_header writes it:
    /// the extension follows the feature name table. The caller writes the header.
    /// </summary>
    public void SetBitmaps(int count, long directorySize, long directoryOffset)
    {
        var index = Extensions.FindIndex(e => e.Type == ExtensionBitmaps);
        if (count == 0)
        {
            if (index >= 0)
            {
                Extensions.RemoveAt(index);
            }

            Bitmaps = null;
            AutoclearFeatures &= ~AutoclearBitmaps;
            return;
        }

        var data = new byte[BitmapsExtensionLength];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)count);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(8), (ulong)directorySize);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(16), (ulong)directoryOffset);
        var extension = new Qcow2HeaderExtension(ExtensionBitmaps, data);
        if (index >= 0)
        {
            Extensions[index] = extension;
        }
        else
        {
            var after = Extensions.FindLastIndex(e => e.Type is ExtensionBackingFormat or ExtensionExternalDataFile or ExtensionFullDiskEncryption or ExtensionFeatureNameTable);
            Extensions.Insert(after + 1, extension);
        }

        Bitmaps = (count, directorySize, directoryOffset);
        AutoclearFeatures |= AutoclearBitmaps;
    }

    /// <summary>
    /// Parses and checks the header from the start of the file, with QEMU 7.2's checks in QEMU's order and
    /// with QEMU's messages (qcow2_do_open, qcow2_read_extensions), so that the first fault qemu-img reports
    /// is the one reported here. <paramref name="data"/> holds the first cluster; bytes past its end (a file
    /// shorter than that) read as zeroes, as the file layer returns them. Tables may lie past the end of the
    /// file (they read as zeroes too), as QEMU allows.
    /// </summary>
    /// <param name="data">The first cluster of the file, or as much of it as the file holds.</param>
    /// <param name="image">The file name, for <see cref="Qcow2Exception.Image"/>.</param>
    /// <param name="writable">The image is opened for writing: an image marked corrupt is refused.</param>
    /// <param name="check">
    /// Opened by <c>check</c> (QEMU's BDRV_O_CHECK): a missing refcount table and a broken snapshot table
    /// are left for the check to report.
    /// </param>
    public static Qcow2Header Parse(ReadOnlySpan<byte> data, string image, bool writable = false, bool check = false)
    {
        Qcow2Exception Bad(string message, BlockErrno errno = BlockErrno.EINVAL) => new(image, message, errno);

        // The fixed fields of a version 3 header, zero-padded like a short read past the end of the file.
        Span<byte> fixedPart = stackalloc byte[Version3MinHeaderLength + 8];
        fixedPart.Clear();
        data[..Math.Min(data.Length, fixedPart.Length)].CopyTo(fixedPart);

        if (BinaryPrimitives.ReadUInt32BigEndian(fixedPart) != Magic)
        {
            throw Bad("Image is not in qcow2 format");
        }

        var version = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[4..]);
        if (version is < 2 or > 3)
        {
            throw Bad($"Unsupported qcow2 version {version}", BlockErrno.ENOTSUP);
        }

        var clusterBits = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[20..]);
        if (clusterBits is < MinClusterBits or > MaxClusterBits)
        {
            throw Bad($"Unsupported cluster size: 2^{clusterBits}");
        }

        var h = new Qcow2Header { Version = (int)version, ClusterBits = (int)clusterBits };
        var clusterSize = h.ClusterSize;
        if (data.Length < clusterSize)
        {
            var padded = new byte[clusterSize];
            data.CopyTo(padded);
            data = padded;
        }

        data = data[..clusterSize];
        var backingFileOffset = BinaryPrimitives.ReadUInt64BigEndian(data[8..]);
        var backingFileSize = BinaryPrimitives.ReadUInt32BigEndian(data[16..]);
        var size = BinaryPrimitives.ReadUInt64BigEndian(data[24..]);
        var cryptMethod = BinaryPrimitives.ReadUInt32BigEndian(data[32..]);
        var l1Size = BinaryPrimitives.ReadUInt32BigEndian(data[36..]);
        var l1TableOffset = BinaryPrimitives.ReadUInt64BigEndian(data[40..]);
        var refcountTableOffset = BinaryPrimitives.ReadUInt64BigEndian(data[48..]);
        var refcountTableClusters = BinaryPrimitives.ReadUInt32BigEndian(data[56..]);
        var nbSnapshots = BinaryPrimitives.ReadUInt32BigEndian(data[60..]);
        var snapshotsOffset = BinaryPrimitives.ReadUInt64BigEndian(data[64..]);

        uint refcountOrder = 4;
        uint headerLength = Version2HeaderLength;
        if (version == 3)
        {
            h.IncompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(data[72..]);
            h.CompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(data[80..]);
            h.AutoclearFeatures = BinaryPrimitives.ReadUInt64BigEndian(data[88..]);
            refcountOrder = BinaryPrimitives.ReadUInt32BigEndian(data[96..]);
            headerLength = BinaryPrimitives.ReadUInt32BigEndian(data[100..]);
            if (headerLength < Version3MinHeaderLength)
            {
                throw Bad("qcow2 header too short");
            }
        }

        if (headerLength > clusterSize)
        {
            throw Bad("qcow2 header exceeds cluster size");
        }

        h.HeaderLength = (int)headerLength;
        if (headerLength > Version3MinHeaderLength)
        {
            h.CompressionType = data[104];
            h.UnknownHeaderFields = data[105..(int)headerLength].ToArray();
        }

        if (backingFileOffset > (ulong)clusterSize)
        {
            throw Bad("Invalid backing file offset");
        }

        h.BackingFileOffset = (long)backingFileOffset;
        h.BackingFileSize = (int)Math.Min(int.MaxValue, backingFileSize);

        // Extensions run from the end of the fixed header to the backing file name (or the cluster's end).
        // They are read once here; a fault in them is reported where QEMU reads them, after the tables.
        var extensionsEnd = backingFileOffset != 0 ? (int)backingFileOffset : clusterSize;
        var extensionFault = ReadExtensions(h, data, extensionsEnd, (int)cryptMethod);

        CheckCompressionType(h, Bad);
        var unknown = h.IncompatibleFeatures & ~IncompatibleKnown;
        if (unknown != 0)
        {
            throw Bad($"Unsupported qcow2 feature(s): {h.DescribeIncompatible(unknown)}", BlockErrno.ENOTSUP);
        }

        if ((h.IncompatibleFeatures & IncompatibleCorrupt) != 0 && writable && !check)
        {
            throw Bad("qcow2: Image is corrupt; cannot be opened read/write", BlockErrno.EACCES);
        }

        if (h.HasExtendedL2 && clusterBits < MinClusterBitsExtendedL2)
        {
            throw Bad($"Unsupported subcluster size: {clusterSize / 32}");
        }

        if (refcountOrder > MaxRefcountOrder)
        {
            throw Bad("Reference count entry width too large; may not exceed 64 bits");
        }

        h.RefcountOrder = (int)refcountOrder;
        if (refcountTableClusters == 0 && !check)
        {
            throw Bad("Image does not contain a reference count table");
        }

        ValidateTable(h, refcountTableOffset, refcountTableClusters, (ulong)clusterSize, MaxRefcountTableBytes, "Reference count table", Bad);
        if (!check)
        {
            ValidateTable(h, snapshotsOffset, nbSnapshots, SnapshotHeaderLength, (long)SnapshotHeaderLength * MaxSnapshots, "Snapshot table", Bad);
        }

        ValidateTable(h, l1TableOffset, l1Size, 8, MaxL1TableBytes, "Active L1 table", Bad);
        h.RefcountTableOffset = (long)refcountTableOffset;
        h.RefcountTableClusters = (int)refcountTableClusters;
        h.L1TableOffset = (long)l1TableOffset;
        h.L1Size = (int)l1Size;
        h.NbSnapshots = (int)Math.Min(int.MaxValue, nbSnapshots);
        h.SnapshotsOffset = (long)Math.Min(long.MaxValue, snapshotsOffset);

        // L1 entries needed for the virtual size, counted without overflow (QEMU's size_to_l1).
        var l1Shift = h.ClusterBits + h.ClusterBits - (h.HasExtendedL2 ? 4 : 3);
        var l1Needed = (size >> l1Shift) + ((size & ((1UL << l1Shift) - 1)) != 0 ? 1UL : 0);
        if (l1Needed > int.MaxValue)
        {
            throw Bad("Image is too big", BlockErrno.EFBIG);
        }

        if (l1Size < l1Needed)
        {
            throw Bad("L1 table is too small");
        }

        h.Size = (long)size;
        if (extensionFault is { } fault)
        {
            throw Bad(fault);
        }

        CheckCryptMethod(cryptMethod, Bad);
        if (backingFileOffset != 0)
        {
            if (backingFileSize > Math.Min(MaxBackingFileNameLength, clusterSize - (int)backingFileOffset))
            {
                throw Bad("Backing file name too long");
            }

            if (backingFileSize > 0)
            {
                h.BackingFile = Encoding.UTF8.GetString(data.Slice((int)backingFileOffset, (int)backingFileSize));
            }
        }

        // Features QEMU supports and this implementation does not: refused after every check QEMU makes,
        // so that an image QEMU refuses gets QEMU's message.
        if ((h.IncompatibleFeatures & IncompatibleExternalData) != 0)
        {
            throw Bad("images with an external data file are not supported", BlockErrno.ENOTSUP);
        }

        if (h.CompressionType != 0)
        {
            throw Bad("zstd compression is not supported (only zlib)", BlockErrno.ENOTSUP);
        }

        return h;
    }

    /// <summary>QEMU's validate_compression_type: a known type, and the incompatible bit set exactly for non-zlib.</summary>
    static void CheckCompressionType(Qcow2Header h, Func<string, BlockErrno, Qcow2Exception> bad)
    {
        if (h.CompressionType > 1)
        {
            throw bad($"qcow2: unknown compression type: {h.CompressionType}", BlockErrno.ENOTSUP);
        }

        var bit = (h.IncompatibleFeatures & IncompatibleCompressionType) != 0;
        if (h.CompressionType == 0 && bit)
        {
            throw bad("qcow2: Compression type incompatible feature bit must not be set", BlockErrno.EINVAL);
        }

        if (h.CompressionType != 0 && !bit)
        {
            throw bad("qcow2: Compression type incompatible feature bit must be set", BlockErrno.EINVAL);
        }
    }

    /// <summary>
    /// Encryption is not supported. Where QEMU refuses the method outright, its message; AES (1) and LUKS
    /// (2), which QEMU opens with a key, are refused in our own words.
    /// </summary>
    static void CheckCryptMethod(uint method, Func<string, BlockErrno, Qcow2Exception> bad)
    {
        switch (method)
        {
            case 0:
                return;
            case 1 or LuksCryptMethod:
                throw bad($"encrypted images are not supported (crypt_method {method})", BlockErrno.ENOTSUP);
            default:
                throw bad($"Unsupported encryption method {method}", BlockErrno.EINVAL);
        }
    }

    /// <summary>QEMU's qcow2_validate_table: a table's size within its limit, its offset aligned and its end representable.</summary>
    static void ValidateTable(Qcow2Header h, ulong offset, ulong entries, ulong entryLength, long maxBytes, string name,
        Func<string, BlockErrno, Qcow2Exception> bad)
    {
        if (entries > (ulong)maxBytes / entryLength)
        {
            throw bad($"{name} too large", BlockErrno.EFBIG);
        }

        if ((ulong)long.MaxValue - entries * entryLength < offset || (offset & (ulong)(h.ClusterSize - 1)) != 0)
        {
            throw bad($"{name} offset invalid", BlockErrno.EINVAL);
        }
    }

    /// <summary>QEMU's report_unsupported_feature: names from the feature name table, then the unnamed bits in hex.</summary>
    string DescribeIncompatible(ulong mask)
    {
        var parts = new List<string>();
        for (var bit = 0; bit < 64; bit++)
        {
            if ((mask & (1UL << bit)) != 0 && FeatureName(0, bit) is { Length: > 0 } name)
            {
                parts.Add(name);
                mask &= ~(1UL << bit);
            }
        }

        if (mask != 0)
        {
            parts.Add($"Unknown incompatible feature: {mask:x}");
        }

        return string.Join(", ", parts);
    }

    /// <summary>
    /// Reads the header extensions into <see cref="Extensions"/> (QEMU's qcow2_read_extensions); returns QEMU's
    /// message for the first one that is invalid, or null. Reading stops there, as QEMU's does.
    /// </summary>
    static string? ReadExtensions(Qcow2Header h, ReadOnlySpan<byte> data, int end, int cryptMethod)
    {
        var position = h.HeaderLength;
        while (position < end)
        {
            if (position + 8 > end)
            {
                return "Header extension too large";
            }

            var type = BinaryPrimitives.ReadUInt32BigEndian(data[position..]);
            var length = BinaryPrimitives.ReadUInt32BigEndian(data[(position + 4)..]);
            position += 8;
            if (position > end || length > end - position)
            {
                return "Header extension too large";
            }

            var body = data.Slice(position, (int)length);
            switch (type)
            {
                case ExtensionEnd:
                    return null;
                case ExtensionBackingFormat when length >= BackingFormatBuffer:
                    return $"ERROR: ext_backing_format: len={length} too large (>={BackingFormatBuffer})";
                case ExtensionFullDiskEncryption when cryptMethod != LuksCryptMethod:
                    return "CRYPTO header extension only expected with LUKS encryption method";
                case ExtensionBitmaps:
                    if (CheckBitmaps(h, body) is { } fault)
                    {
                        return fault;
                    }

                    break;
            }

            h.Extensions.Add(new Qcow2HeaderExtension(type, body.ToArray()));
            position += (int)((length + 7) & ~7u);
        }

        return null;
    }

    /// <summary>The bitmaps extension as QEMU checks it; ignored (QEMU warns) when the autoclear bit says it is stale.</summary>
    static string? CheckBitmaps(Qcow2Header h, ReadOnlySpan<byte> body)
    {
        if (body.Length != BitmapsExtensionLength)
        {
            return "bitmaps_ext: Invalid extension length";
        }

        if ((h.AutoclearFeatures & AutoclearBitmaps) == 0)
        {
            return null;
        }

        var count = BinaryPrimitives.ReadUInt32BigEndian(body);
        var directorySize = BinaryPrimitives.ReadUInt64BigEndian(body[8..]);
        var directoryOffset = BinaryPrimitives.ReadUInt64BigEndian(body[16..]);
        if (BinaryPrimitives.ReadUInt32BigEndian(body[4..]) != 0)
        {
            return "bitmaps_ext: Reserved field is not zero";
        }

        if (count > MaxBitmaps)
        {
            return $"bitmaps_ext: Image has {count} bitmaps, exceeding the QEMU supported maximum of {MaxBitmaps}";
        }

        if (count == 0)
        {
            return "found bitmaps extension with zero bitmaps";
        }

        if ((directoryOffset & (ulong)(h.ClusterSize - 1)) != 0)
        {
            return "bitmaps_ext: invalid bitmap directory offset";
        }

        if (directorySize > MaxBitmapDirectoryBytes)
        {
            return $"bitmaps_ext: bitmap directory size ({directorySize}) exceeds the maximum supported size ({MaxBitmapDirectoryBytes})";
        }

        h.Bitmaps = ((int)count, (long)directorySize, (long)directoryOffset);
        return null;
    }
}
