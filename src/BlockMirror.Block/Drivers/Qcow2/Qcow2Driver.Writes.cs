using System.Runtime.CompilerServices;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Writes, write-zeroes, discard, flush and truncate.
public sealed partial class Qcow2Driver
{
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        CheckWritable(BlockOperation.Write, offset, buffer.Length);
        while (buffer.Length > 0)
        {
            var written = await WriteRunAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
            offset += written;
            buffer = buffer[written..];
        }
    }

    /// <summary>
    /// The token for a change of metadata that has begun: none. A request's token (a mirror's forced cancel
    /// cancels its in-flight target writes) is honoured while the request waits and while it moves data,
    /// never between the file requests of one metadata change: a reservation, a zeroing or a discard cut
    /// short between its refcount, L2 and L1 writes leaves clusters counted that nothing uses (leaks), or an
    /// L1 entry set in memory that never reaches the file. QEMU's coroutines cannot be cancelled there either.
    /// </summary>
    static CancellationToken MetadataChange => CancellationToken.None;

    void CheckWritable(BlockOperation operation, long offset, long length)
    {
        if (_image.Corrupt)
        {
            throw _image.CorruptRefusal(operation, offset, length);
        }

        if (_writeRefusal is not null)
        {
            throw BlockIOException.Create(BlockErrno.ENOTSUP, _image.Name, operation, offset, length, _writeRefusal);
        }
    }

    /// <summary>
    /// Takes the metadata lock at a moment when no allocating write is under way on the guest clusters that
    /// [start, end) touches.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask LockClearOfAllocationsAsync(long start, long end, CancellationToken cancellationToken)
    {
        var g = _image.Geometry;
        start = g.ClusterStart(start);
        end = g.ClusterEnd(end);
        while (true)
        {
            await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
            Qcow2Allocation? busy = null;
            foreach (var allocation in _allocations)
            {
                if (allocation.Start < end && start < allocation.End)
                {
                    busy = allocation;
                    break;
                }
            }

            if (busy is null)
            {
                return;
            }

            _lock.Release();
            await busy.Done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Writes a prefix of <paramref name="data"/> that maps one way inside one L2 table; returns its length.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<int> WriteRunAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        var g = _image.Geometry;
        var span = (int)Math.Min(data.Length, (g.L1Index(offset) + 1) * g.L2Span - offset);
        Qcow2Mapping run;
        Qcow2Allocation? allocation = null;
        long host, clusterStart = 0, clusters = 0;
        var knownZero = false;
        int slot;
        await LockClearOfAllocationsAsync(offset, offset + span, cancellationToken).ConfigureAwait(false);
        try
        {
            run = await MapAsync(BlockOperation.Write, offset, span, cancellationToken).ConfigureAwait(false);
            if (run.Kind == Qcow2ClusterKind.Normal && run.Copied)
            {
                host = run.HostOffset;
                if (_image.OverlapsMetadata(host, run.Length))
                {
                    throw await _image.SignalCorruptionAsync(BlockOperation.Write, offset, run.Length,
                        $"guest offset {offset} maps to host offset {host}, which holds metadata", cancellationToken).ConfigureAwait(false);
                }

                await _image.EnsureFileLengthAsync(host + run.Length, cancellationToken).ConfigureAwait(false);
                slot = _image.HostInFlight.Register(host, host + run.Length);
            }
            else
            {
                clusterStart = g.ClusterStart(offset);
                clusters = g.ClustersFor(offset + run.Length - clusterStart);
                try
                {
                    // Not cancellable: a reservation links a new L2 table and counts clusters over several
                    // file requests, and one cut short leaks them (see MetadataChange).
                    (host, knownZero) = await _image.ReserveDataClustersAsync(clusterStart, clusters, MetadataChange).ConfigureAwait(false);
                }
                catch (Qcow2Corruption c)
                {
                    throw await _image.SignalCorruptionAsync(BlockOperation.Write, offset, run.Length, c.Problem, cancellationToken).ConfigureAwait(false);
                }

                allocation = new Qcow2Allocation(clusterStart, clusterStart + (clusters << g.ClusterBits));
                _allocations.Add(allocation);
                slot = _image.HostInFlight.Register(host, host + (clusters << g.ClusterBits));
            }
        }
        finally
        {
            _lock.Release();
        }

        var length = (int)run.Length;
        try
        {
            if (allocation is null)
            {
                _image.File.DebugEvent(BlkdebugEvent.WriteAio);
                await _image.File.WriteAsync(host, data[..length], RequestFlags.None, cancellationToken).ConfigureAwait(false);
                return length;
            }

            try
            {
                await WriteAllocatedAsync(run, offset, data[..length], clusterStart, clusters, host, knownZero, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await FinishAllocationAsync(allocation, () => _image.UnreserveDataClustersAsync(host, clusters, CancellationToken.None), offset, length).ConfigureAwait(false);
                throw;
            }

            await FinishAllocationAsync(allocation, () => _image.CommitDataClustersAsync(clusterStart, clusters, host, CancellationToken.None), offset, length).ConfigureAwait(false);
            return length;
        }
        finally
        {
            _image.HostInFlight.Release(slot);
        }
    }

    /// <summary>Sets (or gives back) an allocation's clusters under the lock, and lets waiting requests go.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask FinishAllocationAsync(Qcow2Allocation allocation, Func<ValueTask> change, long offset, long length)
    {
        // Not cancellable: the data is written (or the write failed) and the metadata must follow either way.
        await _lock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            await change().ConfigureAwait(false);
        }
        catch (Qcow2Corruption c)
        {
            throw await _image.SignalCorruptionAsync(BlockOperation.Write, offset, length, c.Problem, CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            _allocations.Remove(allocation);
            _lock.Release();
            allocation.Done.TrySetResult();
        }
    }

    /// <summary>
    /// Writes data into newly reserved clusters, with the rest of the first and last cluster copied from what
    /// the guest saw there before (backing file, zeroes, compressed or shared data). Head, data and tail go
    /// out in one vectored write; zero parts are skipped when the new clusters are known to read as zeroes.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask WriteAllocatedAsync(Qcow2Mapping old, long offset, ReadOnlyMemory<byte> data, long clusterStart, long clusters, long host,
        bool knownZero, CancellationToken cancellationToken)
    {
        var g = _image.Geometry;
        var head = (int)(offset - clusterStart);
        var tailStart = offset + data.Length;
        var tail = (int)Math.Max(0, Math.Min(clusterStart + (clusters << g.ClusterBits), _image.Size) - tailStart);
        var zeroSource = old.Kind == Qcow2ClusterKind.Zero || (old.Kind == Qcow2ClusterKind.Unallocated && Backing is null);
        if (zeroSource && knownZero && (head > 0 || tail > 0) && _image.File.Node.Limits.RequestAlignment > 1)
        {
            // With O_DIRECT, a write into a hole makes the file system allocate under its inode lock, one
            // write at a time; allocating the whole new clusters at once (fallocate ZERO_RANGE, as QEMU's
            // handle_alloc_space does) turns the data writes into overwrites, which run in parallel. Through
            // the page cache the hole costs nothing and the extra call would. A file system without
            // ZERO_RANGE just skips this.
            await _image.PreallocateAsync(host, clusters << g.ClusterBits, cancellationToken).ConfigureAwait(false);
        }

        if (zeroSource && knownZero || head == 0 && tail == 0)
        {
            _image.File.DebugEvent(BlkdebugEvent.WriteAio);
            await _image.File.WriteAsync(host + head, data, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            return;
        }

        AlignedMemory? headBuffer = null, tailBuffer = null;
        try
        {
            var segments = new List<ReadOnlyMemory<byte>>(3);
            // The copied head and tail go out with the data in one write: QEMU's cow_read, then cow_write.
            _image.File.DebugEvent(BlkdebugEvent.CowRead);
            if (head > 0)
            {
                segments.Add(await CopySourceAsync(old, offset, clusterStart, head, zeroSource, b => headBuffer = b, cancellationToken).ConfigureAwait(false));
            }

            segments.Add(data);
            if (tail > 0)
            {
                segments.Add(await CopySourceAsync(old, offset, tailStart, tail, zeroSource, b => tailBuffer = b, cancellationToken).ConfigureAwait(false));
            }

            _image.File.DebugEvent(BlkdebugEvent.CowWrite);
            await _image.File.WriteVectorAsync(host, segments, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (headBuffer is not null)
            {
                _buffers.Return(headBuffer);
            }

            if (tailBuffer is not null)
            {
                _buffers.Return(tailBuffer);
            }
        }
    }

    /// <summary>The old guest bytes [start, start + length) of a cluster being copied on write.</summary>
    async ValueTask<ReadOnlyMemory<byte>> CopySourceAsync(Qcow2Mapping old, long offset, long start, int length, bool zeroSource,
        Action<AlignedMemory> rented, CancellationToken cancellationToken)
    {
        if (zeroSource)
        {
            return Zeroes.Value.Memory[..length];
        }

        var buffer = _buffers.Rent(length);
        rented(buffer);
        var memory = buffer.Memory[..length];
        switch (old.Kind)
        {
            case Qcow2ClusterKind.Unallocated:
                await ReadBackingAsync(start, memory, cancellationToken).ConfigureAwait(false);
                break;
            case Qcow2ClusterKind.Compressed:
                await ReadCompressedAsync(old.Entry, start & _image.Geometry.ClusterMask, memory, cancellationToken).ConfigureAwait(false);
                break;
            default:
                // A cluster shared with a snapshot (refcount above one): its old host bytes.
                await _image.ReadClampedAsync(old.HostOffset + (start - offset), memory, cancellationToken).ConfigureAwait(false);
                break;
        }

        return memory;
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        CheckWritable(BlockOperation.WriteZeroes, offset, length);
        var pieces = ZeroPieces(offset, length);
        if ((flags & RequestFlags.NoFallback) != 0)
        {
            // A fast zeroing either happens whole or not at all: every piece that would need zero buffers
            // is found before any piece changes.
            foreach (var (start, count, whole) in pieces)
            {
                if (!await CanZeroWithoutWritingAsync(start, count, whole, cancellationToken).ConfigureAwait(false))
                {
                    throw BlockIOException.Create(BlockErrno.ENOTSUP, _image.Name, BlockOperation.WriteZeroes, offset, length,
                        whole
                            ? "a version 2 (compat=0.10) image with a backing file can only zero by writing zeroes, and the request asked for no fallback"
                            : "zeroing part of a cluster needs writing zeroes, and the request asked for no fallback");
                }
            }
        }

        foreach (var (start, count, whole) in pieces)
        {
            if (whole)
            {
                await ZeroClustersAsync(start, count >> _image.Geometry.ClusterBits, flags, cancellationToken).ConfigureAwait(false);
            }
            else if (!await CanZeroWithoutWritingAsync(start, count, whole: false, cancellationToken).ConfigureAwait(false))
            {
                await WriteZeroBuffersAsync(start, count, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// The range cut into partial clusters and runs of whole clusters inside one L2 table (a trailing
    /// partial cluster at the end of the image counts as whole).
    /// </summary>
    List<(long Start, long Length, bool Whole)> ZeroPieces(long offset, long length)
    {
        var g = _image.Geometry;
        var pieces = new List<(long, long, bool)>();
        var end = offset + length;
        while (offset < end)
        {
            var clusterStart = g.ClusterStart(offset);
            var clusterLimit = Math.Min(clusterStart + g.ClusterSize, _image.Size);
            if (offset != clusterStart || end < clusterLimit)
            {
                var partEnd = Math.Min(end, clusterLimit);
                pieces.Add((offset, partEnd - offset, false));
                offset = partEnd;
                continue;
            }

            var wholeEnd = Math.Min((g.L1Index(offset) + 1) * g.L2Span, end >= _image.Size ? g.ClusterEnd(end) : g.ClusterStart(end));
            pieces.Add((offset, wholeEnd - offset, true));
            offset = Math.Min(wholeEnd, end);
        }

        return pieces;
    }

    /// <summary>
    /// Whether a piece can be zeroed by changing metadata only: whole clusters, unless only writing zeroes
    /// hides a backing file (version 2); a partial cluster, when it already reads as zeroes.
    /// </summary>
    async ValueTask<bool> CanZeroWithoutWritingAsync(long offset, long length, bool whole, CancellationToken cancellationToken)
    {
        if (whole)
        {
            return _image.Header.Version >= 3 || !HasBackingFile;
        }

        Qcow2Mapping run;
        await LockClearOfAllocationsAsync(offset, offset + length, cancellationToken).ConfigureAwait(false);
        try
        {
            run = await MapAsync(BlockOperation.WriteZeroes, offset, length, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }

        var backing = Backing;
        var readsZero = run.Kind == Qcow2ClusterKind.Zero ||
            (run.Kind == Qcow2ClusterKind.Unallocated && !HasBackingFile) ||
            (run.Kind == Qcow2ClusterKind.Unallocated && backing is not null && offset >= backing.Node.Length);
        return readsZero && run.Length >= length;
    }

    async ValueTask ZeroClustersAsync(long offset, long count, RequestFlags flags, CancellationToken cancellationToken)
    {
        var g = _image.Geometry;
        var hasBacking = HasBackingFile;
        if (_image.Header.Version < 3 && hasBacking)
        {
            // No zero flag in version 2: only writing zeroes hides the backing file.
            await WriteZeroBuffersAsync(offset, count << g.ClusterBits, cancellationToken).ConfigureAwait(false);
            return;
        }

        var update = (flags & RequestFlags.MayUnmap) != 0 ? Qcow2Image.ClusterUpdate.ZeroUnmapping : Qcow2Image.ClusterUpdate.ZeroKeepingHost;
        await UpdateClustersAsync(BlockOperation.WriteZeroes, offset, count, update, hasBacking, cancellationToken).ConfigureAwait(false);
    }

    async ValueTask UpdateClustersAsync(BlockOperation operation, long offset, long count, Qcow2Image.ClusterUpdate update, bool hasBacking, CancellationToken cancellationToken)
    {
        var g = _image.Geometry;
        await LockClearOfAllocationsAsync(offset, offset + (count << g.ClusterBits), cancellationToken).ConfigureAwait(false);
        try
        {
            await _image.UpdateClustersAsync(offset, count, update, hasBacking, MetadataChange).ConfigureAwait(false);
        }
        catch (Qcow2Corruption c)
        {
            throw await _image.SignalCorruptionAsync(operation, offset, count << g.ClusterBits, c.Problem, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    async ValueTask WriteZeroBuffersAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var zeroes = Zeroes.Value.Memory;
        while (length > 0)
        {
            var count = (int)Math.Min(length, zeroes.Length);
            await WriteAsync(offset, zeroes[..count], RequestFlags.None, cancellationToken).ConfigureAwait(false);
            offset += count;
            length -= count;
        }
    }

    /// <summary>
    /// Releases whole clusters (QEMU's qcow2 discard): with <c>discard=unmap</c> they are freed and punched out
    /// of the file and, on version 3, read as zeroes afterwards; partial clusters are left as they are.
    /// </summary>
    public async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (_image.Discard != FileDiscardMode.Unmap)
        {
            return;
        }

        CheckWritable(BlockOperation.Discard, offset, length);
        var g = _image.Geometry;
        var end = offset + length;
        var start = g.ClusterEnd(offset);
        var stop = end >= _image.Size ? g.ClusterEnd(end) : g.ClusterStart(end);
        while (start < stop)
        {
            var pieceEnd = Math.Min(stop, (g.L1Index(start) + 1) * g.L2Span);
            await UpdateClustersAsync(BlockOperation.Discard, start, (pieceEnd - start) >> g.ClusterBits, Qcow2Image.ClusterUpdate.Discard,
                HasBackingFile, cancellationToken).ConfigureAwait(false);
            start = pieceEnd;
        }
    }

    /// <summary>
    /// Drops every cluster, so the image reads its backing file everywhere again (QEMU's bdrv_make_empty,
    /// which <c>qemu-img commit</c> does to the committed image), and makes that durable.
    /// </summary>
    public async ValueTask MakeEmptyAsync(CancellationToken cancellationToken = default)
    {
        CheckWritable(BlockOperation.Discard, 0, _image.Size);
        var g = _image.Geometry;
        var end = g.ClusterEnd(_image.Size);
        for (long start = 0; start < end;)
        {
            var pieceEnd = Math.Min(end, (g.L1Index(start) + 1) * g.L2Span);
            await UpdateClustersAsync(BlockOperation.Discard, start, (pieceEnd - start) >> g.ClusterBits, Qcow2Image.ClusterUpdate.Unallocate,
                HasBackingFile, cancellationToken).ConfigureAwait(false);
            start = pieceEnd;
        }

        await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_image.Writable && !_image.Corrupt)
            {
                await _image.WriteBackAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            _lock.Release();
        }

        await _image.File.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes another backing file name (and format) into the image header, or removes it. Only the header
    /// changes: which node backs this one is the graph's business.
    /// </summary>
    public async ValueTask ChangeBackingFileAsync(string? name, string? format, CancellationToken cancellationToken = default)
    {
        if (!_image.Writable)
        {
            throw BlockIOException.Create(BlockErrno.EPERM, _image.Name, BlockOperation.Write, 0, 0, "the image is open read-only: its backing file name cannot change");
        }

        CheckWritable(BlockOperation.Write, 0, 0);
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _image.ChangeBackingFileAsync(name, format, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// Changes the virtual size, as QEMU's qcow2_co_truncate: growing, the new part reads as zeroes, also over a
    /// backing file longer than the image (<see cref="ZeroOverBackingAsync"/>); shrinking, the clusters past the
    /// new end are discarded and the tables and the file shrink with them (<see cref="Qcow2Image.ShrinkAsync"/>).
    /// A version 2 image with internal snapshots is refused either way: its snapshots need not record their size.
    /// </summary>
    public async ValueTask TruncateAsync(long length, CancellationToken cancellationToken)
    {
        CheckWritable(BlockOperation.Truncate, 0, length);
        // QEMU's order: the alignment before anything else.
        if (length % 512 != 0)
        {
            throw BlockIOException.Create(BlockErrno.EINVAL, _image.Name, BlockOperation.Truncate, 0, length,
                "The new size must be a multiple of 512");
        }

        if (_image.Snapshots.Count > 0 && _image.Header.Version < 3)
        {
            throw BlockIOException.Create(BlockErrno.ENOTSUP, _image.Name, BlockOperation.Truncate, 0, length,
                "Can't resize a v2 image which has snapshots");
        }

        // After the snapshots, as QEMU checks them (qcow2_truncate_bitmaps_check).
        if (BitmapResizeRefusal() is { } bitmapRefusal)
        {
            throw BlockIOException.Create(BlockErrno.ENOTSUP, _image.Name, BlockOperation.Truncate, 0, length, bitmapRefusal);
        }

        // Growing over a backing file that reaches past the present end would show the backing file's data in the
        // new part: what a shrink cut off, or what the image never covered. QEMU's bdrv_co_truncate asks for the new
        // part to be zeroed then, which version 2 (no zero clusters) refuses; so is it refused here, before anything
        // changes.
        var oldSize = _image.Size;
        var hidesBacking = length > oldSize && Backing is { } backing && backing.Node.Length > oldSize;
        if (hidesBacking && _image.Header.Version < 3)
        {
            throw BlockIOException.Create(BlockErrno.ENOTSUP, _image.Name, BlockOperation.Truncate, 0, length,
                "Failed to zero out new clusters: Operation not supported");
        }

        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (length < _image.Size)
            {
                await _image.ShrinkAsync(length, MetadataChange).ConfigureAwait(false);
            }
            else
            {
                await _image.GrowAsync(length, MetadataChange).ConfigureAwait(false);
            }
        }
        catch (Qcow2Corruption c)
        {
            throw await _image.SignalCorruptionAsync(BlockOperation.Truncate, 0, length, c.Problem, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }

        if (hidesBacking)
        {
            await ZeroOverBackingAsync(oldSize, length, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Zeroes the part a grow added over a longer backing file (zero clusters; explicit zeroes for the rest of the
    /// cluster the old end fell in, as QEMU writes them) and flushes. If that fails the image is shrunk back to its
    /// old size, so that a failed grow does not leave the backing file's data showing (if the shrink fails too, the
    /// caller still sees the first failure, and the image stays as far grown as it got).
    /// </summary>
    async ValueTask ZeroOverBackingAsync(long oldSize, long newSize, CancellationToken cancellationToken)
    {
        try
        {
            await WriteZeroesAsync(oldSize, newSize - oldSize, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            await FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is BlockIOException or OperationCanceledException)
        {
            await _lock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                await _image.ShrinkAsync(oldSize, MetadataChange).ConfigureAwait(false);
            }
            catch (Exception undo) when (undo is BlockIOException or Qcow2Corruption or IOException)
            {
                // The original failure is what the caller must see; the image is as far grown as it got.
            }
            finally
            {
                _lock.Release();
            }

            throw;
        }
    }
}
