using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Raw;

/// <summary>Options of the <c>raw</c> format, as QEMU's: a window of the file child.</summary>
/// <param name="Offset">Where the image starts in the file.</param>
/// <param name="Size">The image length; null means up to the end of the file.</param>
/// <param name="Probed">
/// The format was not given but guessed from the content (QEMU's <c>bs-&gt;probed</c>): writes that would make
/// the first block announce an image format are refused, see <see cref="RawProbeGuard"/>.
/// </param>
/// <param name="Unmap">
/// The raw node's own <c>discard=unmap</c>: without it the node drops discards (BlockNode) and does not announce
/// unmapping, whatever its file can do; as in QEMU 7.2, a write-zeroes that may unmap still reaches the file so.
/// </param>
public sealed record RawDriverOptions(long Offset = 0, long? Size = null, bool Probed = false, bool Unmap = true);

/// <summary>
/// The <c>raw</c> format: the image is the bytes of its <c>file</c> child, optionally a window of them.
/// Requests pass through with the offset added; block status is the file's.
/// </summary>
public sealed class RawDriver : IBlockDriver, IReopenableDriver, ISpliceReadable
{
    public const string Name = DriverNames.Raw;

    readonly NodeEdge _file;
    readonly long _offset;
    readonly long? _size;
    readonly RawProbeGuard? _guard;

    RawDriver(NodeEdge file, RawDriverOptions options, string nodeName)
    {
        _file = file;
        _offset = options.Offset;
        _size = options.Size;
        _guard = options.Probed ? new RawProbeGuard(file, nodeName) : null;
        var window = _offset != 0 || _size is not null;
        var fileCaps = file.Node.Capabilities;
        Capabilities = fileCaps with
        {
            SupportsBacking = false,
            CanDiscard = fileCaps.CanDiscard && options.Unmap,
            DiscardZeroes = fileCaps.DiscardZeroes && options.Unmap,
            CanUnmapOnZero = fileCaps.CanUnmapOnZero && options.Unmap,
            CanTruncate = fileCaps.CanTruncate && !window,
            ZeroInit = fileCaps.ZeroInit && !window,
        };
    }

    /// <summary>Creates a raw node over <paramref name="file"/>, checking the window against the file.</summary>
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, BlockNode file, RawDriverOptions? options = null, bool readOnly = false, CancellationToken cancellationToken = default)
    {
        options ??= new RawDriverOptions();
        return graph.CreateNodeAsync(nodeName, readOnly, (node, _) =>
        {
            if (options.Offset < 0 || options.Size < 0)
            {
                throw new BlockOpenException($"raw: offset and size must not be negative (offset {options.Offset}, size {options.Size})");
            }

            // QEMU's checks and words (raw_apply_options), the double space of its last message included.
            var fileLength = file.Length;
            if (options.Offset > fileLength)
            {
                throw new BlockOpenException($"Offset ({options.Offset}) cannot be greater than size of the containing file ({fileLength})");
            }

            if (options.Size is { } size && size > fileLength - options.Offset)
            {
                throw new BlockOpenException(
                    $"The sum of offset ({options.Offset}) and size ({size}) has to be smaller or equal to the  actual size of the containing file ({fileLength})");
            }

            if (options.Size is { } whole && whole % 512 != 0)
            {
                // A size the sector-based layers above would round up would leak past the window's end.
                throw new BlockOpenException("Specified size is not multiple of 512");
            }

            var alignment = file.Limits.RequestAlignment;
            var windowEnd = options.Size is { } windowSize ? options.Offset + windowSize : fileLength;
            if (options.Offset % alignment != 0 || (options.Size ?? 0) % alignment != 0)
            {
                throw new BlockOpenException($"raw: offset and size must be multiples of the file's request alignment ({alignment} bytes)");
            }

            if (!readOnly && windowEnd % alignment != 0)
            {
                // Its last, partial block could not be written with O_DIRECT.
                throw new BlockOpenException(
                    $"Could not open '{file.Driver.FileName ?? file.Name}' with cache.direct=on for writing: its size ({windowEnd} bytes) is not a multiple of {alignment}");
            }

            var edge = node.AttachChild(ChildNames.File, file);
            return ValueTask.FromResult<IBlockDriver>(new RawDriver(edge, options, node.Name));
        }, cancellationToken);
    }

    public string DriverName => Name;

    public DriverKind Kind => DriverKind.Format;

    public DriverCapabilities Capabilities { get; }

    public BlockLimits Limits => _file.Node.Limits;

    public long Length => _size ?? _file.Node.Length - _offset;

    public string? FileName => _file.Node.Driver.FileName;

    // Reads and writes announce themselves to the file (blkdebug's read_aio and write_aio), as QEMU's raw does.

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        _file.DebugEvent(BlkdebugEvent.ReadAio);
        return _file.ReadAsync(_offset + offset, buffer, cancellationToken);
    }

    public bool CanSpliceRead(long offset, int length) => _file.Node.CanSpliceRead(_offset + offset, length);

    public ValueTask SpliceReadAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken)
    {
        _file.DebugEvent(BlkdebugEvent.ReadAio);
        return _file.SpliceReadAsync(_offset + offset, length, pipe, cancellationToken);
    }

    public ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        _file.DebugEvent(BlkdebugEvent.ReadAio);
        return _file.ReadVectorAsync(_offset + offset, buffers, cancellationToken);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        if (_guard is not null && offset < ImageFormatProbe.Size)
        {
            return GuardedAsync(offset, [buffer], flags, cancellationToken);
        }

        _file.DebugEvent(BlkdebugEvent.WriteAio);
        return _file.WriteAsync(_offset + offset, buffer, flags, cancellationToken);
    }

    public ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        if (_guard is not null && offset < ImageFormatProbe.Size)
        {
            return GuardedAsync(offset, buffers, flags, cancellationToken);
        }

        _file.DebugEvent(BlkdebugEvent.WriteAio);
        return _file.WriteVectorAsync(_offset + offset, buffers, flags, cancellationToken);
    }

    async ValueTask GuardedAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        await _guard!.CheckWriteAsync(offset, buffers, cancellationToken).ConfigureAwait(false);
        _file.DebugEvent(BlkdebugEvent.WriteAio);
        await _file.WriteVectorAsync(_offset + offset, buffers, flags, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        if (_guard is not null && offset < ImageFormatProbe.Size)
        {
            await _guard.CheckZeroesAsync(offset, length, BlockOperation.WriteZeroes, cancellationToken).ConfigureAwait(false);
        }

        await _file.WriteZeroesAsync(_offset + offset, length, flags, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (_guard is not null && offset < ImageFormatProbe.Size)
        {
            // A discarded range may read back as zeroes: judge the block as if it did.
            await _guard.CheckZeroesAsync(offset, length, BlockOperation.Discard, cancellationToken).ConfigureAwait(false);
        }

        await _file.DiscardAsync(_offset + offset, length, cancellationToken).ConfigureAwait(false);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => _file.FlushAsync(cancellationToken);

    public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var status = await _file.GetBlockStatusAsync(_offset + offset, length, cancellationToken).ConfigureAwait(false);

        // The data lives in the file at the same offset plus the window start; say so, as QEMU's raw does.
        return new BlockStatus((status.Flags & (BlockStatusFlags.Data | BlockStatusFlags.Zero)) | BlockStatusFlags.OffsetValid,
            status.Length, _offset + offset);
    }

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        _file.TruncateAsync(length, cancellationToken);

    /// <summary>The raw format keeps no state of its own; going read-write, its window must still suit the file.</summary>
    public ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken)
    {
        var alignment = _file.Node.Limits.RequestAlignment;
        if (!readOnly && (_offset + Length) % alignment != 0)
        {
            throw BlockIOException.Create(BlockErrno.EINVAL, _file.Node.Name, BlockOperation.Write, 0, 0,
                $"with cache.direct=on the image's end ({_offset + Length} bytes) must be a multiple of {alignment} to be written");
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
