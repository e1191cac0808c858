using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers.File;

/// <summary>
/// The <c>file</c> protocol driver: a regular file through positional I/O (<see cref="RandomAccess"/>) on a
/// <see cref="SafeFileHandle"/>; block status from lseek SEEK_DATA/SEEK_HOLE; write-zeroes and discard
/// with fallocate; flush with fdatasync; optional O_DIRECT. Every one of those blocking calls is made by
/// <see cref="FileIoThreads"/>, never on the caller's thread.
/// </summary>
/// <remarks>
/// <para>With <c>cache.direct</c> the driver declares a 4 KiB request alignment (the largest logical block
/// size in use, so it is right on every device); the node pads any other request to it, so users still
/// send any byte range. Buffers whose address is not 4 KiB aligned go through a pooled aligned bounce
/// buffer.</para>
/// <para>fallocate modes are tried in order of preference and a mode the file system refuses
/// (EOPNOTSUPP) is remembered and not tried again: punch-hole for may-unmap zeroing, then zero-range,
/// then writing zero buffers unless the caller asked for no fallback.</para>
/// </remarks>
public sealed class FileDriver : IBlockDriver, IReopenableDriver, IPermissionAwareDriver, ISpliceReadable
{
    public const string Name = DriverNames.File;

    /// <summary>Alignment demanded with O_DIRECT.</summary>
    public const int DirectAlignment = AlignedMemory.DirectAlignment;

    /// <summary>Longest scatter/gather list one system call takes (Linux IOV_MAX).</summary>
    const int MaxSegments = 1024;

    const int ZeroChunk = 1 << 20;

    // Shared zeroes for the write-zeroes fallback: aligned, so it also serves O_DIRECT, never written.
    static readonly Lazy<AlignedMemory> Zeroes = new(() => new AlignedMemory(ZeroChunk, DirectAlignment));

    /// <summary>Where lseek and ftruncate run (no engine has them as asynchronous operations).</summary>
    static FileIoThreads Threads => FileIoThreads.Shared;

    /// <summary>Where reads, writes, fallocate and fdatasync go: the I/O threads or io_uring (<c>aio</c>).</summary>
    readonly IFileIo _io;

    // Replaced only by a reopen, which runs drained (nothing in flight).
    SafeFileHandle _handle;

    // Opened for writing (now): the close makes what was written durable first (see DisposeAsync).
    bool _writable;
    readonly ILogger _logger;
    readonly string _nodeName;
    readonly FileDriverOptions _options;
    readonly AlignedBufferPool? _bounce;
    // Null with locking=off, or with auto where the file system has no OFD locks.
    readonly FileLocks? _locks;
    long _length;
    // Plain fields: a stale read only costs one more fallocate attempt that fails the same way.
    bool _zeroRangeUnsupported;
    bool _punchUnsupported;

    FileDriver(SafeFileHandle handle, FileDriverOptions options, long length, bool canPunch, IFileIo io, bool writable, ILogger logger, string nodeName)
    {
        _io = io;
        _writable = writable;
        _logger = logger;
        _nodeName = nodeName;
        _handle = handle;
        _options = options;
        _length = length;
        _punchUnsupported = !canPunch;
        _bounce = options.Direct ? new AlignedBufferPool(DirectAlignment) : null;
        _locks = FileLocks.Supported(handle, options.Locking, options.Filename) ? new FileLocks(options.Filename, handle) : null;
        Capabilities = CapabilitiesFor(options, canPunch);
        Limits = new BlockLimits(RequestAlignment: options.Direct ? DirectAlignment : 1);
    }

    /// <summary>Opens a regular file as a node.</summary>
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, FileDriverOptions options, bool readOnly = false, CancellationToken cancellationToken = default) =>
        graph.CreateNodeAsync(nodeName, readOnly, (node, _) => ValueTask.FromResult<IBlockDriver>(Open(options, readOnly, graph.Logger, node.Name)), cancellationToken);

    static FileDriver Open(FileDriverOptions options, bool readOnly, ILogger logger, string nodeName)
    {
        var aio = options.Aio ?? FileDriverOptions.DefaultAio;
        if (!FileDriverOptions.AioModes.Contains(aio))
        {
            throw new BlockOpenException($"Parameter 'aio' does not accept value '{options.Aio}' (expected one of: {string.Join(", ", FileDriverOptions.AioModes)})");
        }

        if (string.IsNullOrEmpty(options.Filename))
        {
            throw new BlockOpenException("Parameter 'filename' is missing");
        }

        if (Directory.Exists(options.Filename))
        {
            throw new BlockOpenException($"Could not open '{options.Filename}': Is a directory", BlockErrno.EISDIR);
        }

        // Looked at before the open too: opening a FIFO for reading would wait for a writer.
        RequireRegular(options.Filename, FileStatus.KindOf(options.Filename));
        var handle = OpenHandle(options, readOnly);
        try
        {
            RequireRegular(options.Filename, FileStatus.KindOf(handle));
            if (aio == "native" && !options.Direct)
            {
                // QEMU's Linux AIO works only with O_DIRECT and it refuses the pair, after opening the file as
                // here; we serve native with the threads, but refuse what QEMU refuses.
                throw new BlockOpenException("aio=native was specified, but it requires cache.direct=on, which was not specified.");
            }

            // With O_DIRECT a length that is not a multiple of the alignment leaves a last block that cannot
            // be written on its own: the raw format refuses such a file for writing; qcow2 grows it first.
            var length = RandomAccess.GetLength(handle);
            var canPunch = !readOnly && options.Discard == FileDiscardMode.Unmap && ProbePunchHole(handle, length);
            return new FileDriver(handle, options, length, canPunch, FileIoEngines.Select(aio, logger, nodeName), !readOnly, logger, nodeName);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Refuses what is not a regular file, in QEMU's words: a block or character device is its host_device and
    /// host_cdrom drivers' (which this daemon does not have), and a FIFO or socket no image. Before this, a block
    /// device opened as a file of 0 bytes: a mirror from it "succeeded" having copied nothing.
    /// </summary>
    internal static void RequireRegular(string path, UnixFileKind? kind)
    {
        if (kind is { } known && known != UnixFileKind.Regular)
        {
            // QEMU's words (file-posix's raw_open_common).
            throw new BlockOpenException($"'file' driver requires '{path}' to be a regular file", BlockErrno.EINVAL);
        }
    }

    static SafeFileHandle OpenHandle(FileDriverOptions options, bool readOnly)
    {
        var flags = (readOnly ? LibC.O_RDONLY : LibC.O_RDWR) | LibC.O_CLOEXEC | (options.Direct ? LibC.O_DIRECT : 0);
        var fd = LibC.Open(options.Filename, flags, 0);
        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new BlockOpenException($"Could not open '{options.Filename}': {LibC.Describe(errno)}", BlockErrnoText.FromErrno(errno));
        }

        return new SafeFileHandle(fd, ownsHandle: true);
    }

    static DriverCapabilities CapabilitiesFor(FileDriverOptions options, bool canPunch)
    {
        var unmap = options.Discard == FileDiscardMode.Unmap && canPunch;
        return new DriverCapabilities
        {
            CanZeroEfficiently = true,
            CanUnmapOnZero = unmap,
            CanDiscard = unmap,
            DiscardZeroes = unmap,
            ZeroInit = true,
            CanTruncate = true,
        };
    }

    /// <summary>
    /// Opens the file again with the other access mode and swaps the descriptor (QEMU's raw_reopen does the
    /// same). The new descriptor must name the same file: one renamed or replaced under the path since the
    /// node opened it is refused rather than silently switched to.
    /// </summary>
    public ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken)
    {
        SafeFileHandle handle;
        try
        {
            handle = OpenHandle(_options, readOnly);
        }
        catch (BlockOpenException ex)
        {
            throw BlockIOException.Create(ex.Errno, _options.Filename, BlockOperation.Write, 0, 0, ex.Message);
        }

        if (FileStatus.AreSame($"/proc/self/fd/{handle.DangerousGetHandle()}", $"/proc/self/fd/{_handle.DangerousGetHandle()}") != true)
        {
            handle.Dispose();
            throw BlockIOException.Create(BlockErrno.EIO, _options.Filename, BlockOperation.Write, 0, 0,
                $"Could not reopen '{_options.Filename}': the path now names another file than the one open");
        }

        var canPunch = !readOnly && _options.Discard == FileDiscardMode.Unmap && ProbePunchHole(handle, Length);
        // The locks belong to the old descriptor and go with it: hold them on the new one first.
        _locks?.MoveTo(handle);
        var old = _handle;
        if (_writable)
        {
            SyncBeforeClose(old);
        }

        _handle = handle;
        _writable = !readOnly;
        _punchUnsupported = !canPunch;
        Capabilities = CapabilitiesFor(_options, canPunch);
        old.Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Asks the file system whether it punches holes, without touching data: a punch past the end with
    /// KEEP_SIZE changes nothing where it is supported and fails with EOPNOTSUPP where it is not.
    /// </summary>
    static bool ProbePunchHole(SafeFileHandle handle, long length) =>
        LibC.FAllocate(handle, LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, length + DirectAlignment, DirectAlignment) == 0;

    /// <summary>Creates (or, with <paramref name="overwrite"/>, replaces) a sparse file of the given size.</summary>
    public static void CreateFile(string path, long size, bool overwrite = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        SafeFileHandle handle;
        try
        {
            handle = System.IO.File.OpenHandle(path, overwrite ? FileMode.Create : FileMode.CreateNew, FileAccess.ReadWrite);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw BlockOpenException.CouldNotCreate(path, ex);
        }

        using (handle)
        {
            try
            {
                RandomAccess.SetLength(handle, size);
            }
            catch (Exception ex) when (ex is IOException or ArgumentOutOfRangeException)
            {
                // A file made here and left empty is removed, so a refused creation leaves nothing behind.
                if (!overwrite)
                {
                    System.IO.File.Delete(path);
                }

                throw BlockOpenException.CouldNotResize(path, ex);
            }
        }
    }

    public string DriverName => Name;

    public DriverKind Kind => DriverKind.Protocol;

    public DriverCapabilities Capabilities { get; private set; }

    public BlockLimits Limits { get; }

    public long Length => Volatile.Read(ref _length);

    public string? FileName => _options.Filename;

    /// <summary>The engine in use: <c>threads</c> or <c>io_uring</c> (after a fallback, threads).</summary>
    internal string Engine => _io.Name;

    bool DirectFriendly(long offset, ReadOnlyMemory<byte> buffer) =>
        _bounce is null ||
        (offset % DirectAlignment == 0 && buffer.Length % DirectAlignment == 0 && AlignedMemory.IsAligned(buffer, DirectAlignment));

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        DirectFriendly(offset, buffer) ? ReadFullAsync(offset, buffer, cancellationToken) : ReadBouncedAsync(offset, buffer, cancellationToken);

    /// <summary>Reads until the buffer is full; bytes past the end of the file read as zeroes.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask ReadFullAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (!buffer.IsEmpty)
        {
            var read = await _io.ReadAsync(_handle, buffer, offset, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                buffer.Span.Clear();
                return;
            }

            buffer = buffer[read..];
            offset += read;
        }
    }

    /// <summary>Any range of a buffered file; with O_DIRECT only what O_DIRECT takes as it is (the kernel reads it into pages of its own).</summary>
    public bool CanSpliceRead(long offset, int length) =>
        SplicePipe.Supported && (_bounce is null || (offset % DirectAlignment == 0 && length % DirectAlignment == 0));

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask SpliceReadAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken)
    {
        while (length > 0)
        {
            var moved = await _io.SpliceAsync(_handle, offset, pipe, length, cancellationToken).ConfigureAwait(false);
            if (moved < 0)
            {
                var errno = (int)-moved;
                throw new IOException($"splice from '{_options.Filename}' at {offset} failed: {LibC.Describe(errno)}", errno);
            }

            if (moved == 0)
            {
                // Past the end of the file (it shrank under us): zeroes, as a read gives.
                pipe.WriteZeroes(length);
                return;
            }

            offset += moved;
            length -= (int)moved;
        }
    }

    async ValueTask ReadBouncedAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        // The node only lets an unaligned length through at the device end; read the whole last block.
        var alignedLength = (int)RoundUp(buffer.Length, DirectAlignment);
        var bounce = _bounce!.Rent(alignedLength);
        try
        {
            await ReadFullAsync(offset, bounce.Memory[..alignedLength], cancellationToken).ConfigureAwait(false);
            bounce.Memory[..buffer.Length].CopyTo(buffer);
        }
        finally
        {
            _bounce.Return(bounce);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        if (buffers.Count > MaxSegments && AllDirectFriendly(offset, buffers))
        {
            // One system call takes at most IOV_MAX segments: send the list in windows of that size.
            for (var start = 0; start < buffers.Count; start += MaxSegments)
            {
                var window = new SegmentWindow<Memory<byte>>(buffers, start, Math.Min(MaxSegments, buffers.Count - start));
                await ReadVectorAsync(offset, window, cancellationToken).ConfigureAwait(false);
                offset += IoVectors.TotalLength(window);
            }

            return;
        }

        if (!AllDirectFriendly(offset, buffers))
        {
            if (!SegmentsBlockAligned(buffers))
            {
                // O_DIRECT cannot take a segment on its own when it starts or ends inside a block (the node
                // only checks the whole request): bounce the whole request, as QEMU does for such a qiov.
                await ReadVectorBouncedAsync(offset, buffers, cancellationToken).ConfigureAwait(false);
                return;
            }

            for (var i = 0; i < buffers.Count; i++)
            {
                await ReadAsync(offset, buffers[i], cancellationToken).ConfigureAwait(false);
                offset += buffers[i].Length;
            }

            return;
        }

        if (buffers.Count == 1)
        {
            // One segment (the mirror's usual case): the single-buffer call allocates nothing, where the
            // vectored one allocates two arrays per call.
            await ReadFullAsync(offset, buffers[0], cancellationToken).ConfigureAwait(false);
            return;
        }

        var expected = IoVectors.TotalLength(buffers);
        var read = await _io.ReadAsync(_handle, buffers, offset, cancellationToken).ConfigureAwait(false);
        if (read < expected)
        {
            // Short read: the file ended (or the kernel split the request). Finish buffer by buffer.
            await FinishShortReadAsync(offset, buffers, read, cancellationToken).ConfigureAwait(false);
        }
    }

    async ValueTask FinishShortReadAsync(long offset, IReadOnlyList<Memory<byte>> buffers, long done, CancellationToken cancellationToken)
    {
        foreach (var buffer in buffers)
        {
            if (done >= buffer.Length)
            {
                done -= buffer.Length;
                offset += buffer.Length;
                continue;
            }

            await ReadFullAsync(offset + done, buffer[(int)done..], cancellationToken).ConfigureAwait(false);
            offset += buffer.Length;
            done = 0;
        }
    }

    bool AllDirectFriendly<T>(long offset, IReadOnlyList<T> buffers)
    {
        if (_bounce is null)
        {
            return true;
        }

        for (var i = 0; i < buffers.Count; i++)
        {
            var memory = buffers[i] switch
            {
                Memory<byte> m => (ReadOnlyMemory<byte>)m,
                ReadOnlyMemory<byte> r => r,
                _ => throw new ArgumentException("buffers must be Memory<byte> or ReadOnlyMemory<byte>"),
            };
            if (!DirectFriendly(offset, memory))
            {
                return false;
            }

            offset += memory.Length;
        }

        return true;
    }

    /// <summary>
    /// Without O_DIRECT, always true. With it: every segment but a last one at the device end is a whole
    /// number of blocks, so that each segment can be sent on its own (bouncing only its address).
    /// </summary>
    bool SegmentsBlockAligned<T>(IReadOnlyList<T> buffers)
    {
        if (_bounce is null)
        {
            return true;
        }

        for (var i = 0; i < buffers.Count - 1; i++)
        {
            var length = buffers[i] switch
            {
                Memory<byte> m => m.Length,
                ReadOnlyMemory<byte> r => r.Length,
                _ => throw new ArgumentException("buffers must be Memory<byte> or ReadOnlyMemory<byte>"),
            };
            if (length % DirectAlignment != 0)
            {
                return false;
            }
        }

        return true;
    }

    async ValueTask ReadVectorBouncedAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        var length = (int)IoVectors.TotalLength(buffers);
        var alignedLength = (int)RoundUp(length, DirectAlignment);
        var bounce = _bounce!.Rent(alignedLength);
        try
        {
            await ReadFullAsync(offset, bounce.Memory[..alignedLength], cancellationToken).ConfigureAwait(false);
            var source = bounce.Memory;
            foreach (var buffer in buffers)
            {
                source[..buffer.Length].CopyTo(buffer);
                source = source[buffer.Length..];
            }
        }
        finally
        {
            _bounce.Return(bounce);
        }
    }

    async ValueTask WriteVectorBouncedAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, CancellationToken cancellationToken)
    {
        var length = (int)IoVectors.TotalLength(buffers);
        var bounce = _bounce!.Rent(length);
        try
        {
            var target = bounce.Memory;
            foreach (var buffer in buffers)
            {
                buffer.CopyTo(target);
                target = target[buffer.Length..];
            }

            await _io.WriteAsync(_handle, bounce.Memory[..length], offset, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _bounce.Return(bounce);
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken) =>
        DirectFriendly(offset, buffer)
            ? _io.WriteAsync(_handle, buffer, offset, cancellationToken)
            : WriteBouncedAsync(offset, buffer, cancellationToken);

    async ValueTask WriteBouncedAsync(long offset, ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        var bounce = _bounce!.Rent(buffer.Length);
        try
        {
            buffer.CopyTo(bounce.Memory);
            await _io.WriteAsync(_handle, bounce.Memory[..buffer.Length], offset, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _bounce.Return(bounce);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        if (buffers.Count > MaxSegments && AllDirectFriendly(offset, buffers))
        {
            for (var start = 0; start < buffers.Count; start += MaxSegments)
            {
                var window = new SegmentWindow<ReadOnlyMemory<byte>>(buffers, start, Math.Min(MaxSegments, buffers.Count - start));
                await WriteVectorAsync(offset, window, flags, cancellationToken).ConfigureAwait(false);
                offset += IoVectors.TotalLength(window);
            }

            return;
        }

        if (!AllDirectFriendly(offset, buffers))
        {
            if (!SegmentsBlockAligned(buffers))
            {
                // See ReadVectorAsync: a segment that splits a block cannot be written on its own with O_DIRECT.
                await WriteVectorBouncedAsync(offset, buffers, cancellationToken).ConfigureAwait(false);
                return;
            }

            for (var i = 0; i < buffers.Count; i++)
            {
                await WriteAsync(offset, buffers[i], flags, cancellationToken).ConfigureAwait(false);
                offset += buffers[i].Length;
            }

            return;
        }

        if (buffers.Count == 1)
        {
            await _io.WriteAsync(_handle, buffers[0], offset, cancellationToken).ConfigureAwait(false);
            return;
        }

        await _io.WriteAsync(_handle, buffers, offset, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        ForgetDataRun();
        if ((flags & RequestFlags.MayUnmap) != 0 && Capabilities.CanUnmapOnZero && !_punchUnsupported &&
            await TryFallocateAsync(PunchHole, offset, length, BlockOperation.WriteZeroes, cancellationToken).ConfigureAwait(false))
        {
            return;
        }

        if (!_zeroRangeUnsupported &&
            await TryFallocateAsync(ZeroRange, offset, length, BlockOperation.WriteZeroes, cancellationToken).ConfigureAwait(false))
        {
            return;
        }

        if ((flags & RequestFlags.NoFallback) != 0)
        {
            throw BlockIOException.Create(BlockErrno.ENOTSUP, _options.Filename, BlockOperation.WriteZeroes, offset, length,
                "the file system cannot zero without writing, and the request asked for no fallback");
        }

        var zeroes = Zeroes.Value.Memory;
        while (length > 0)
        {
            var count = (int)Math.Min(length, ZeroChunk);
            await _io.WriteAsync(_handle, zeroes[..count], offset, cancellationToken).ConfigureAwait(false);
            offset += count;
            length -= count;
        }
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        ForgetDataRun();
        // Discard is advisory: with discard=ignore, or where holes cannot be punched, it does nothing.
        if (Capabilities.CanDiscard && !_punchUnsupported)
        {
            return PunchAsync(offset, length, cancellationToken);
        }

        return ValueTask.CompletedTask;

        async ValueTask PunchAsync(long offset, long length, CancellationToken cancellationToken) =>
            await TryFallocateAsync(PunchHole, offset, length, BlockOperation.Discard, cancellationToken).ConfigureAwait(false);
    }

    const int PunchHole = LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE;
    const int ZeroRange = LibC.FALLOC_FL_ZERO_RANGE | LibC.FALLOC_FL_KEEP_SIZE;

    /// <summary>
    /// fallocate (<see cref="PunchHole"/> or <see cref="ZeroRange"/>) on an I/O thread; false (and the mode
    /// remembered as unsupported) when the file system refuses the mode, a block error for any other
    /// failure (ENOSPC from zero-range, EIO).
    /// </summary>
    async ValueTask<bool> TryFallocateAsync(int mode, long offset, long length, BlockOperation operation, CancellationToken cancellationToken)
    {
        var errno = await _io.FallocateAsync(_handle, mode, offset, length, cancellationToken).ConfigureAwait(false);

        // Again after the call: a status query that ran while the hole was being punched may have cached
        // the state before it.
        ForgetDataRun();
        if (errno == 0)
        {
            return true;
        }

        if (errno is LibC.ENOTSUP or LibC.EINVAL)
        {
            if (mode == PunchHole)
            {
                _punchUnsupported = true;
            }
            else
            {
                _zeroRangeUnsupported = true;
            }

            return false;
        }

        throw BlockIOException.Create(BlockErrnoText.FromErrno(errno), _options.Filename, operation, offset, length,
            $"fallocate: {LibC.Describe(errno)}");
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        // fdatasync blocks until the device has the data; keep it off the caller's thread.
        var errno = await _io.DataSyncAsync(_handle, cancellationToken).ConfigureAwait(false);
        if (errno != 0)
        {
            throw BlockIOException.Create(BlockErrnoText.FromErrno(errno), _options.Filename, BlockOperation.Flush, 0, 0, $"fdatasync: {LibC.Describe(errno)}");
        }
    }

    /// <summary>A run of data lseek found: [Start, End).</summary>
    sealed record DataRun(long Start, long End);

    // The last data run lseek found (QEMU's block-status cache). SEEK_HOLE walks the page cache on some
    // file systems (tmpfs), so asking again for every piece of a dense file is quadratic. Writes only turn
    // holes into data, so they never make a cached data run wrong; write-zeroes, discard and truncate may
    // punch holes, so they forget it. The generation lets a query that raced with one of those see that
    // its answer may be stale and not cache it.
    readonly Lock _dataRunLock = new();
    DataRun? _dataRun;
    long _holeGeneration;

    void ForgetDataRun()
    {
        lock (_dataRunLock)
        {
            _holeGeneration++;
            _dataRun = null;
        }
    }

    /// <summary>Holes read as zeroes, everything else is data; both at the same offset in this file.</summary>
    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var end = offset + length;
        if (Volatile.Read(ref _dataRun) is { } cached && offset >= cached.Start && offset < cached.End)
        {
            // Answered from the cache: no system call, so no trip to an I/O thread.
            return Status(BlockStatusFlags.Data, offset, Math.Min(cached.End, end) - offset);
        }

        return SeekStatusAsync(offset, length, cancellationToken);

        static ValueTask<BlockStatus> Status(BlockStatusFlags flags, long offset, long length) =>
            ValueTask.FromResult(new BlockStatus(flags | BlockStatusFlags.OffsetValid, length, offset));
    }

    /// <summary>Asks the file system with lseek SEEK_DATA / SEEK_HOLE (on an I/O thread: they walk extents or the page cache).</summary>
    async ValueTask<BlockStatus> SeekStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var end = offset + length;
        long generation;
        lock (_dataRunLock)
        {
            generation = _holeGeneration;
        }

        var data = await Threads.SeekAsync(_handle, offset, LibC.SEEK_DATA, cancellationToken).ConfigureAwait(false);
        if (data < 0)
        {
            // ENXIO: no data at or after offset, it sits in the trailing hole. Anything else: the file
            // system cannot tell, so claim data (safe: it gets copied, never skipped).
            return Status(-data == LibC.ENXIO ? BlockStatusFlags.Zero : BlockStatusFlags.Data, length);
        }

        if (data > offset)
        {
            return Status(BlockStatusFlags.Zero, Math.Min(data, end) - offset);
        }

        var hole = await Threads.SeekAsync(_handle, offset, LibC.SEEK_HOLE, cancellationToken).ConfigureAwait(false);
        if (hole <= offset)
        {
            // A racing punch-hole or an odd file system; data is the safe answer.
            return Status(BlockStatusFlags.Data, length);
        }

        lock (_dataRunLock)
        {
            // Only if no hole could have been punched since the lseeks began.
            if (_holeGeneration == generation)
            {
                _dataRun = new DataRun(offset, hole);
            }
        }

        return Status(BlockStatusFlags.Data, Math.Min(hole, end) - offset);

        BlockStatus Status(BlockStatusFlags flags, long length) => new(flags | BlockStatusFlags.OffsetValid, length, offset);
    }

    public async ValueTask TruncateAsync(long length, CancellationToken cancellationToken)
    {
        ForgetDataRun();
        var errno = await Threads.RunAsync(_handle, handle => LibC.FTruncate(handle, length) == 0 ? 0 : Marshal.GetLastPInvokeError(), cancellationToken).ConfigureAwait(false);
        ForgetDataRun();
        if (errno != 0)
        {
            throw BlockIOException.Create(BlockErrnoText.FromErrno(errno), _options.Filename, BlockOperation.Truncate, 0, length, $"ftruncate: {LibC.Describe(errno)}");
        }

        Volatile.Write(ref _length, length);
    }

    /// <inheritdoc/>
    public void SetPermissions(BlockPermissions takes, BlockPermissions shares) => _locks?.Apply(takes, shares);

    static long RoundUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;

    /// <summary>
    /// Closes the file; one opened for writing is fdatasync'd first, as QEMU's bdrv_close flushes every node: what a
    /// writer never flushed (an NBD client that sent no flush, then a shutdown or a blockdev-del) reaches the disk
    /// before the descriptor goes. The flush is here, in the local file, and not above: a network node's flush
    /// could wait for its server to come back.
    /// </summary>
    public ValueTask DisposeAsync()
    {
        if (_writable)
        {
            SyncBeforeClose(_handle);
        }

        _handle.Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>fdatasync before a descriptor is closed; a failure is logged and the close goes on, as in QEMU.</summary>
    void SyncBeforeClose(SafeFileHandle handle)
    {
        if (LibC.FDataSync(handle) != 0)
        {
            FileDriverLog.CloseSyncFailed(_logger, _nodeName, _options.Filename, LibC.Describe(Marshal.GetLastPInvokeError()));
        }
    }

    /// <summary>A window of a segment list, without copying it.</summary>
    sealed class SegmentWindow<T>(IReadOnlyList<T> list, int start, int count) : IReadOnlyList<T>
    {
        public T this[int index] => (uint)index < (uint)count ? list[start + index] : throw new ArgumentOutOfRangeException(nameof(index));

        public int Count => count;

        public IEnumerator<T> GetEnumerator()
        {
            for (var i = 0; i < count; i++)
            {
                yield return list[start + i];
            }
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }
}
