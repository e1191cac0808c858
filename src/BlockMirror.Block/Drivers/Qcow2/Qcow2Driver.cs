using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// The <c>qcow2</c> format (docs/interop/qcow2.txt in qemu/qemu): versions 2 and 3, clusters of 512 B to
/// 2 MiB, backing files, zero clusters, compressed clusters (read), extended L2 entries (read), internal
/// snapshots kept intact (shared clusters are copied on write). Images it writes are images qemu-img reads.
/// </summary>
/// <remarks>
/// <para><b>Concurrency.</b> One async metadata lock (QEMU's <c>s-&gt;lock</c>) covers lookups and changes of
/// L1/L2 tables and refcounts; data moves outside it. A read or an in-place write looks its run up under
/// the lock and then does its I/O. An allocating write reserves host clusters under the lock, writes data
/// (with the copy-on-write head and tail of partly written clusters) outside it, and takes the lock again to
/// point the L2 entries at the new clusters. Meanwhile a <see cref="Qcow2Allocation"/> makes every other
/// request that changes those guest clusters wait, and the host ranges in flight keep the allocator from
/// reusing a cluster a late request is still using.</para>
/// <para>The file grows as clusters are allocated; writes past its end never reach the file node.</para>
/// </remarks>
public sealed partial class Qcow2Driver : IBlockDriver, IReopenableDriver, IBackingFileFormat, IImageWarnings
{
    public const string Name = DriverNames.Qcow2;

    /// <summary>Backing chains deeper than this are refused (a guard against runaway recursion, not a format limit).</summary>
    public const int MaxChainDepth = 64;

    // Zeroes for copy-on-write from a zero cluster: one cluster at most, aligned for O_DIRECT, never written.
    static readonly Lazy<AlignedMemory> Zeroes = new(() => new AlignedMemory(1 << Qcow2Header.MaxClusterBits, FileDriver.DirectAlignment));

    readonly BlockNode _node;
    readonly Qcow2Image _image;
    readonly SemaphoreSlim _lock = new(1, 1);
    readonly List<Qcow2Allocation> _allocations = [];
    readonly AlignedBufferPool _buffers;
    readonly DriverCapabilities _withBacking;
    readonly DriverCapabilities _withoutBacking;
    readonly string? _writeRefusal;

    Qcow2Driver(BlockNode node, Qcow2Image image, int alignment, string? writeRefusal, IReadOnlyList<string> warnings)
    {
        _node = node;
        _image = image;
        _writeRefusal = writeRefusal;
        Warnings = warnings;
        _buffers = new AlignedBufferPool(Math.Max(alignment, 64));
        Limits = new BlockLimits(RequestAlignment: alignment, ClusterSize: image.Geometry.ClusterSize);
        var v3 = image.Header.Version >= 3;
        var unmap = image.Discard == FileDiscardMode.Unmap;
        _withoutBacking = new DriverCapabilities
        {
            CanZeroEfficiently = true,
            CanUnmapOnZero = true,
            CanDiscard = unmap,
            DiscardZeroes = unmap,
            ZeroInit = true,
            SupportsBacking = true,
            CanTruncate = true,
        };
        _withBacking = _withoutBacking with
        {
            CanZeroEfficiently = v3,
            CanUnmapOnZero = v3,
            DiscardZeroes = unmap && v3,
            ZeroInit = false,
        };
    }

    public string DriverName => Name;

    public DriverKind Kind => DriverKind.Format;

    public DriverCapabilities Capabilities => HasBackingFile ? _withBacking : _withoutBacking;

    public BlockLimits Limits { get; }

    public long Length => _image.Size;

    public string? FileName => _image.File.Node.Driver.FileName;

    /// <summary>The header as it is now (read it for <c>info</c>; do not change it).</summary>
    public Qcow2Header Header => _image.Header;

    /// <summary>The internal snapshots the image holds (kept intact, not used).</summary>
    public IReadOnlyList<SnapshotInfo> Snapshots => _image.Snapshots;

    /// <summary>What the open found worth telling the user (an image marked corrupt opened for reading only).</summary>
    public IReadOnlyList<string> Warnings { get; }

    NodeEdge? Backing => _node.GetChild(ChildNames.Backing);

    /// <summary>
    /// A backing file is open, or the header names one that is not open (yet): a mirror target gets its
    /// backing only at the switch-over. Either way an unallocated cluster is not known to read as zeroes,
    /// so zeroing and discarding must mark clusters zero instead of leaving them unallocated.
    /// </summary>
    bool HasBackingFile => Backing is not null || _image.Header.BackingFile is not null;

    /// <summary>The backing file the header names (whether or not it is open).</summary>
    public string? BackingFileName => _image.Header.BackingFile;

    public string? BackingFormat => _image.Header.BackingFormat;

    /// <summary>
    /// Opens a qcow2 node over <paramref name="file"/>: checks the header and every table pointer before
    /// anything is written, repairs the refcounts of an image left dirty (when opened for writing), and
    /// opens the backing chain.
    /// </summary>
    public static async ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, BlockNode file, Qcow2Options? options = null,
        bool readOnly = false, CancellationToken cancellationToken = default)
    {
        options ??= new Qcow2Options();
        var opened = await graph.CreateNodeAsync(nodeName, readOnly, async (node, ct) =>
        {
            var name = file.Driver.FileName ?? file.Name;
            Qcow2Image image;
            List<string> warnings = [];
            try
            {
                var (header, block) = await ReadHeaderAsync(file, name, !readOnly, ct).ConfigureAwait(false);
                var alignment = Math.Max(1, file.Limits.RequestAlignment);
                if (header.ClusterSize < alignment)
                {
                    throw new BlockOpenException(
                        $"qcow2 image '{name}': its cluster size ({header.ClusterSize}) is smaller than the file's request alignment ({alignment}, from cache.direct=on); open it with cache.direct=off");
                }

                if (!readOnly && (header.IncompatibleFeatures & Qcow2Header.IncompatibleDirty) != 0 && (header.IncompatibleFeatures & Qcow2Header.IncompatibleCorrupt) == 0)
                {
                    // Left dirty by a writer with lazy refcounts that did not close the image: the refcounts
                    // may be wrong, and the allocator trusts them. Rebuild them from the L1/L2 tables first.
                    await Qcow2Check.RepairDirtyAsync(file, name, ct).ConfigureAwait(false);
                    (header, block) = await ReadHeaderAsync(file, name, !readOnly, ct).ConfigureAwait(false);
                }

                warnings.AddRange(Qcow2BitmapDirectory.StaleWarnings(header));
                var edge = node.AttachChild(ChildNames.File, file, ChildRole.Storage);
                var l2Cache = options.L2CacheSize ?? Math.Clamp(header.Size / header.ClusterSize * header.L2EntrySize, 1, Qcow2Options.DefaultL2CacheLimit);
                image = await Qcow2Image.OpenAsync(edge, header, block, name, !readOnly, l2Cache, options.Discard, ct).ConfigureAwait(false);
            }
            catch (Qcow2Exception e)
            {
                // QEMU's message as blockdev-add gives it; the image tools add "Could not open 'FILE': ".
                throw new BlockOpenException(e.Message, e.Errno, e);
            }

            try
            {
                string? refusal = null;
                if (image.Corrupt)
                {
                    refusal = $"qcow2 image '{name}' is marked corrupt and refuses writes (run 'blockmirror check -r all' to repair it)";
                    if (!readOnly)
                    {
                        warnings.Add($"qcow2 image '{name}' is marked corrupt: it is open for reading only");
                    }
                }
                else if (image.Geometry.ExtendedL2)
                {
                    refusal = $"qcow2 image '{name}' has extended L2 entries (subclusters): reading is supported, writing is not";
                }
                else if (!readOnly)
                {
                    await image.ClearAutoclearFeaturesAsync(ct).ConfigureAwait(false);
                    if ((image.Header.IncompatibleFeatures & Qcow2Header.IncompatibleDirty) != 0)
                    {
                        await image.ClearDirtyBitAsync(ct).ConfigureAwait(false);
                    }
                }

                var bitmaps = await LoadBitmapsAsync(image, ct).ConfigureAwait(false);
                if (!readOnly && refusal is null)
                {
                    // Before anything is written: from here until they are stored at close, the bitmaps on disk are stale.
                    await image.MarkBitmapsInUseAsync(ct).ConfigureAwait(false);
                }

                var alignment = Math.Max(1, file.Limits.RequestAlignment);
                var backing = await OpenBackingAsync(graph, node, image, options, ct).ConfigureAwait(false);
                if (backing is not null)
                {
                    alignment = Math.Max(alignment, backing.Limits.RequestAlignment);
                }

                return new Qcow2Driver(node, image, alignment, refusal, warnings) { _loadedBitmaps = bitmaps };
            }
            catch (Qcow2Exception e)
            {
                image.Dispose();
                throw new BlockOpenException(e.Message, e.Errno, e);
            }
            catch
            {
                image.Dispose();
                throw;
            }
        }, cancellationToken).ConfigureAwait(false);

        // The node bitmaps need the node, which exists only now.
        ((Qcow2Driver)opened.Driver).AttachPersistentBitmaps();
        return opened;
    }

    /// <summary>
    /// Reads and checks the header; returns it with the first cluster's bytes. Reads only the header cluster,
    /// as QEMU does (its fields first, then the rest of the cluster, where the extensions and the backing file
    /// name are): nothing past it is touched until a table is needed.
    /// </summary>
    static async ValueTask<(Qcow2Header Header, byte[] Block)> ReadHeaderAsync(BlockNode file, string name, bool writable, CancellationToken cancellationToken)
    {
        var block = await ReadHeaderClusterAsync(file, cancellationToken).ConfigureAwait(false);
        var header = Qcow2Header.Parse(block, name, writable);
        if (block.Length != header.ClusterSize)
        {
            Array.Resize(ref block, header.ClusterSize);
        }

        return (header, block);
    }

    /// <summary>
    /// The header cluster, its part past the end of the file as zeroes: a first read of the fixed fields
    /// (one block of the file's alignment), then the rest of the cluster that cluster_bits names.
    /// </summary>
    internal static async ValueTask<byte[]> ReadHeaderClusterAsync(BlockNode file, CancellationToken cancellationToken)
    {
        var alignment = Math.Max(1, file.Limits.RequestAlignment);
        var first = new byte[Math.Max(alignment, 1 << Qcow2Header.MinClusterBits)];
        ValueTask Read(long offset, Memory<byte> buffer, CancellationToken ct) => file.ReadAsync(offset, buffer, ct);
        await Qcow2FileReads.ReadClampedAsync(Read, file.Length, alignment, 0, first, cancellationToken).ConfigureAwait(false);
        var clusterBits = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(first.AsSpan(20));
        if (clusterBits is < Qcow2Header.MinClusterBits or > Qcow2Header.MaxClusterBits || 1 << (int)clusterBits <= first.Length)
        {
            return first;
        }

        var block = new byte[1 << (int)clusterBits];
        first.CopyTo(block, 0);
        await Qcow2FileReads.ReadClampedAsync(Read, file.Length, alignment, first.Length, block.AsMemory(first.Length), cancellationToken).ConfigureAwait(false);
        return block;
    }

    static async ValueTask<BlockNode?> OpenBackingAsync(BlockGraph graph, BlockNode node, Qcow2Image image, Qcow2Options options, CancellationToken cancellationToken)
    {
        switch (options.Backing)
        {
            case Qcow2BackingMode.None:
                return null;
            case Qcow2BackingMode.Node:
                var given = options.BackingNode ?? throw new BlockOpenException("qcow2: backing mode 'node' needs a backing node");
                node.AttachChild(ChildNames.Backing, given);
                return given;
        }

        if (image.Header.BackingFile is not { } backingName)
        {
            return null;
        }

        var path = BackingPaths.Resolve(image.Name, backingName);
        var chain = options.Chain.Count == 0 ? [Identity(image.Name)] : options.Chain;
        var identity = Identity(path);
        if (chain.Contains(identity))
        {
            throw new BlockOpenException($"qcow2 image '{image.Name}': backing file '{backingName}' makes a loop (an image of the chain backs itself)", BlockErrno.ELOOP);
        }

        if (chain.Count >= MaxChainDepth)
        {
            throw new BlockOpenException($"qcow2 image '{image.Name}': the backing chain is deeper than {MaxChainDepth} images");
        }

        var format = image.Header.BackingFormat;
        if (format is not null && !ImageFiles.Formats.Contains(format))
        {
            throw new BlockOpenException($"qcow2 image '{image.Name}': backing file format '{format}' is not supported (supported: {string.Join(", ", ImageFiles.Formats)})");
        }

        // A header without a backing format leaves it to the probe, and a backing probed as raw keeps QEMU's
        // guard on its first block: a commit that reopens it read-write must not write an image header there.
        BlockNode backing;
        try
        {
            backing = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, format, ReadOnly: true, Direct: options.BackingDirect),
                [.. chain, identity], cancellationToken).ConfigureAwait(false);
        }
        catch (BlockOpenException e)
        {
            throw new BlockOpenException($"Could not open backing file '{backingName}' of '{image.Name}': {e.Message}", e.Errno, e);
        }

        // Read-only because nothing writes a backing file, not because the user said so: a commit into it
        // may reopen it read-write.
        backing.AutoReadOnly = true;
        node.AttachChild(ChildNames.Backing, backing);
        return backing;
    }

    /// <summary>
    /// Opens the backing chain the header names, for an image opened without it (QEMU's
    /// bdrv_open_backing_file: a drive-mirror target in mode 'existing' gets its chain at the switch-over).
    /// Returns the backing node, or null when the header names none. An image with a backing open keeps it.
    /// </summary>
    public async ValueTask<BlockNode?> OpenBackingFileAsync(BlockGraph graph, CancellationToken cancellationToken = default)
    {
        if (Backing is { } open)
        {
            return open.Node;
        }

        var options = new Qcow2Options { BackingDirect = _image.File.Node.Limits.RequestAlignment > 1 };
        return await OpenBackingAsync(graph, _node, _image, options, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>What makes two paths the same file for loop detection: device and inode, else the full path.</summary>
    static string Identity(string path) =>
        Interop.FileStatus.Identify(path) is { } id ? $"{id.DevMajor}:{id.DevMinor}:{id.Inode}" : Path.GetFullPath(path);

    public async ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (readOnly)
            {
                // QEMU's qcow2_reopen_bitmaps_ro: stored first, as at close.
                await StorePersistentBitmapsLockedAsync(cancellationToken).ConfigureAwait(false);
            }

            await _image.ReopenAsync(readOnly, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            try
            {
                await StorePersistentBitmapsLockedAsync(CancellationToken.None).ConfigureAwait(false);
            }
            finally
            {
                // Bitmaps that could not be stored stay in use (stale) on disk; the rest of the image still closes cleanly.
                await _image.CloseAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
        finally
        {
            _lock.Release();
            _image.Dispose();
        }
    }
}
