using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>What <c>qemu-img create -f qcow2 -o ...</c> takes, with its names and defaults.</summary>
public sealed record Qcow2CreateOptions
{
    /// <summary>Virtual size in bytes, a multiple of 512.</summary>
    public required long Size { get; init; }

    /// <summary>QEMU's default <c>cluster_size</c>.</summary>
    public const int DefaultClusterSize = 65536;

    /// <summary><c>cluster_size</c>: a power of two from 512 B to 2 MiB.</summary>
    public int ClusterSize { get; init; } = DefaultClusterSize;

    /// <summary>2 for <c>compat=0.10</c>, 3 for <c>compat=1.1</c> (the default).</summary>
    public int Version { get; init; } = 3;

    /// <summary><c>backing_file</c>, stored as given (a relative name is relative to the new image's directory).</summary>
    public string? BackingFile { get; init; }

    /// <summary><c>backing_fmt</c>.</summary>
    public string? BackingFormat { get; init; }

    /// <summary><c>lazy_refcounts</c> (version 3 only).</summary>
    public bool LazyRefcounts { get; init; }

    /// <summary><c>refcount_bits</c>: a power of two from 1 to 64 (16 only on version 2).</summary>
    public int RefcountBits { get; init; } = 16;

    /// <summary>The <c>-o</c> line qemu-img prints: <c>fmt=qcow2 cluster_size=65536 ...</c>.</summary>
    public string Describe() =>
        $"fmt=qcow2 cluster_size={ClusterSize} extended_l2=off compression_type=zlib size={Size}" +
        (BackingFile is null ? "" : $" backing_file={BackingFile}") + (BackingFormat is null ? "" : $" backing_fmt={BackingFormat}") +
        (Version == 2 ? " compat=0.10" : "") + $" lazy_refcounts={(LazyRefcounts ? "on" : "off")} refcount_bits={RefcountBits}";
}

/// <summary>Writes a new, empty qcow2 image with the layout qemu-img gives it: header, refcount table, refcount block, L1 table.</summary>
public static class Qcow2Create
{
    /// <summary>Checks the options the way qemu-img does; null when they are fine, else what is wrong.</summary>
    public static string? Validate(Qcow2CreateOptions options)
    {
        if (options.ClusterSize < 512 || options.ClusterSize > 1 << Qcow2Header.MaxClusterBits || (options.ClusterSize & (options.ClusterSize - 1)) != 0)
        {
            return $"Cluster size must be a power of two between 512 and 2048k (got {options.ClusterSize})";
        }

        if (options.Version is not (2 or 3))
        {
            return "Invalid compat level (expected 0.10 or 1.1)";
        }

        if (options.RefcountBits is < 1 or > 64 || (options.RefcountBits & (options.RefcountBits - 1)) != 0)
        {
            return $"Refcount width must be a power of two and may not exceed 64 bits (got {options.RefcountBits})";
        }

        if (options.Version == 2 && options.RefcountBits != 16)
        {
            return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)";
        }

        if (options.Version == 2 && options.LazyRefcounts)
        {
            return "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)";
        }

        if (options.Size < 0 || options.Size % 512 != 0)
        {
            return $"Image size must be a multiple of 512 bytes (got {options.Size})";
        }

        if (!FitsL1Table(options.Size, options.ClusterSize))
        {
            return ImageReplacement.TooLarge(DriverNames.Qcow2);
        }

        if (options.BackingFile is { } backing && Encoding.UTF8.GetByteCount(backing) > Qcow2Header.MaxBackingFileNameLength)
        {
            return $"Backing file name too long (more than {Qcow2Header.MaxBackingFileNameLength} bytes)";
        }

        return null;
    }

    /// <summary>Whether the L1 table of an image of this size stays within qcow2's limit (QEMU's QCOW_MAX_L1_SIZE).</summary>
    /// <param name="clusterSize">A valid cluster size (a power of two from 512 B to 2 MiB).</param>
    public static bool FitsL1Table(long size, int clusterSize) =>
        new Qcow2Header { ClusterBits = int.Log2(clusterSize), Size = size }.L1EntriesFor(size) <= Qcow2Header.MaxL1TableBytes / 8;

    /// <summary>Creates the image; refuses to overwrite an existing file.</summary>
    public static void Create(string path, Qcow2CreateOptions options)
    {
        var image = Image(options);
        try
        {
            using var handle = System.IO.File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
            RandomAccess.Write(handle, image, 0);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException && ex is not BlockOpenException)
        {
            throw BlockOpenException.CouldNotCreate(path, ex);
        }
    }

    /// <summary>
    /// The bytes of the new image, from offset 0 (for a file, the whole file; written over an existing image
    /// that cannot be created, an NBD export, they make it a new qcow2 image there).
    /// </summary>
    /// <exception cref="BlockOpenException">The options are not ones qemu-img takes.</exception>
    public static byte[] Image(Qcow2CreateOptions options) => Checked(options).Image;

    /// <summary>
    /// The bytes QEMU writes when it creates the image (blockdev-create, qemu-img create): <see cref="Image"/> up
    /// to the end of the L1 table's entries, which is where QEMU's new file ends.
    /// </summary>
    /// <exception cref="BlockOpenException">The options are not ones qemu-img takes.</exception>
    public static ReadOnlyMemory<byte> Written(Qcow2CreateOptions options)
    {
        var (image, written) = Checked(options);
        return image.AsMemory(0, written);
    }

    /// <summary>
    /// Writes a new image over the start of a node, through a user's edge that may write and resize it
    /// (blockdev-create's qcow2 on a protocol node). A shorter node is grown to hold it; what lies past it stays,
    /// as QEMU leaves it. Then, as QEMU's qcow2_co_create truncates the new image with its preallocation mode:
    /// <c>metadata</c> allocates every cluster in the tables (the file grows over them, sparse); <c>falloc</c>
    /// also allocates the data clusters' blocks in the file (fallocate, reading zeroes); <c>full</c> writes
    /// zeroes over them.
    /// </summary>
    /// <exception cref="BlockOpenException">The options are not ones qemu-img takes, or the node refused the
    /// write (QEMU's words: "Could not write qcow2 header: ...", "Could not preallocate new data: ...").</exception>
    public static async Task WriteAsync(NodeEdge edge, Qcow2CreateOptions options, PreallocationMode preallocation, CancellationToken cancellationToken)
    {
        var written = Written(options);
        try
        {
            if (edge.Node.Length < written.Length)
            {
                await edge.TruncateAsync(written.Length, cancellationToken).ConfigureAwait(false);
            }

            await edge.WriteAsync(0, written, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            await edge.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (BlockIOException ex)
        {
            throw new BlockOpenException($"Could not write qcow2 header: {ex.Errno.Describe()}", ex.Errno, ex);
        }

        if (preallocation != PreallocationMode.Off)
        {
            await PreallocateAsync(edge, preallocation, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Opens the image just written over <paramref name="edge"/> and preallocates it (<see cref="WriteAsync"/>).</summary>
    static async Task PreallocateAsync(NodeEdge edge, PreallocationMode mode, CancellationToken cancellationToken)
    {
        var name = edge.Node.Name;
        var block = await Qcow2Driver.ReadHeaderClusterAsync(edge.Node, cancellationToken).ConfigureAwait(false);
        var header = Qcow2Header.Parse(block, name, writable: true);
        Array.Resize(ref block, header.ClusterSize);
        var l2Cache = Math.Clamp(header.Size / header.ClusterSize * header.L2EntrySize, 1, Qcow2Options.DefaultL2CacheLimit);
        List<(long Offset, long Length)> data;
        using (var image = await Qcow2Image.OpenAsync(edge, header, block, name, writable: true, l2Cache, File.FileDiscardMode.Ignore, cancellationToken).ConfigureAwait(false))
        {
            data = await image.PreallocateMetadataAsync(cancellationToken).ConfigureAwait(false);
            await image.CloseAsync(cancellationToken).ConfigureAwait(false);
        }

        try
        {
            // The last cluster's part past the image's end is written with zeroes, as QEMU's copy-on-write of the
            // allocation writes it, so the file holds that cluster whole.
            if (header.Size % header.ClusterSize is var tail and not 0 && data.Count > 0)
            {
                var end = data[^1].Offset + data[^1].Length;
                await WriteZeroBuffersAsync(edge, end - header.ClusterSize + tail, header.ClusterSize - tail, cancellationToken).ConfigureAwait(false);
            }

            foreach (var (offset, length) in data)
            {
                if (mode == PreallocationMode.Falloc)
                {
                    // Blocks allocated, reading as zeroes; a node that cannot is refused, as QEMU's falloc is.
                    await edge.WriteZeroesAsync(offset, length, RequestFlags.NoFallback, cancellationToken).ConfigureAwait(false);
                }
                else if (mode == PreallocationMode.Full)
                {
                    await WriteZeroBuffersAsync(edge, offset, length, cancellationToken).ConfigureAwait(false);
                }
            }

            await edge.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (BlockIOException ex)
        {
            throw new BlockOpenException($"Could not preallocate new data: {ex.Errno.Describe()}", ex.Errno, ex);
        }
    }

    /// <summary>Writes zeroes (real ones, so every block is allocated) over [offset, offset + length).</summary>
    static async Task WriteZeroBuffersAsync(NodeEdge edge, long offset, long length, CancellationToken cancellationToken)
    {
        var zeroes = new byte[(int)Math.Min(length, 1 << 20)];
        for (var end = offset + length; offset < end; offset += zeroes.Length)
        {
            await edge.WriteAsync(offset, zeroes.AsMemory(0, (int)Math.Min(zeroes.Length, end - offset)), RequestFlags.None, cancellationToken).ConfigureAwait(false);
        }
    }

    static (byte[] Image, int Written) Checked(Qcow2CreateOptions options) =>
        Validate(options) is { } problem ? throw new BlockOpenException($"qcow2: {problem}") : Build(options);

    static (byte[] Image, int Written) Build(Qcow2CreateOptions options)
    {
        var clusterBits = int.Log2(options.ClusterSize);
        var cs = options.ClusterSize;
        var header = new Qcow2Header
        {
            Version = options.Version,
            ClusterBits = clusterBits,
            Size = options.Size,
            RefcountOrder = int.Log2(options.RefcountBits),
            HeaderLength = options.Version == 3 ? 112 : Qcow2Header.Version2HeaderLength,
            CompatibleFeatures = options.LazyRefcounts ? Qcow2Header.CompatibleLazyRefcounts : 0,
            BackingFile = options.BackingFile,
        };
        if (options.BackingFile is not null && options.BackingFormat is { } format)
        {
            header.BackingFormat = format;
        }

        // QEMU names the feature bits of version 3 images only, and leaves the table out of clusters of 4 KiB
        // and less (its 8 names take 392 bytes, room a backing file name needs).
        if (options.Version >= 3 && cs > 4096)
        {
            header.Extensions.Add(new Qcow2HeaderExtension(Qcow2Header.ExtensionFeatureNameTable, FeatureNameTable()));
        }

        // Header, refcount table (t clusters), refcount blocks (b), L1 table (l): the blocks must count
        // every one of these clusters and the table must hold an entry per block.
        var l1Entries = header.L1EntriesFor(options.Size);
        var l = Math.Max(1, (l1Entries * 8 + cs - 1) / cs);
        var perBlock = (long)cs * 8 / options.RefcountBits;
        long t = 1, b = 1;
        while (true)
        {
            var total = 1 + t + b + l;
            var blocks = (total + perBlock - 1) / perBlock;
            var tables = (blocks * 8 + cs - 1) / cs;
            if (blocks == b && tables == t)
            {
                break;
            }

            b = blocks;
            t = tables;
        }

        var clusters = 1 + t + b + l;
        header.RefcountTableOffset = (long)cs;
        header.RefcountTableClusters = (int)t;
        header.L1TableOffset = (1 + t + b) * cs;
        header.L1Size = (int)l1Entries;

        var image = new byte[clusters * cs];
        var first = header.Serialize();
        first.CopyTo(image, 0);
        for (var i = 0; i < b; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan((int)(cs + i * 8)), (ulong)((1 + t + i) * cs));
        }

        var blocksStart = (int)((1 + t) * cs);
        for (var c = 0L; c < clusters; c++)
        {
            var block = image.AsSpan(blocksStart + (int)(c / perBlock * cs), cs);
            Qcow2Image.WriteRefcount(block, c % perBlock, header.RefcountOrder, 1);
        }

        // An image of size 0 has no L1 entries: QEMU's file then ends with the first refcount block.
        var written = l1Entries > 0 ? header.L1TableOffset + l1Entries * 8 : header.L1TableOffset;
        return (image, (int)written);
    }

    /// <summary>The feature name table extension: the names of the feature bits this format version defines.</summary>
    static byte[] FeatureNameTable()
    {
        (byte Type, byte Bit, string Name)[] features =
        [
            (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"), (0, 3, "compression type"), (0, 4, "extended L2 entries"),
            (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
        ];
        var table = new byte[features.Length * 48];
        for (var i = 0; i < features.Length; i++)
        {
            table[i * 48] = features[i].Type;
            table[i * 48 + 1] = features[i].Bit;
            Encoding.ASCII.GetBytes(features[i].Name).CopyTo(table, i * 48 + 2);
        }

        return table;
    }
}
