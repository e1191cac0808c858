using System.Runtime.CompilerServices;
using System.IO.Compression;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

// Reads and block status: look a run up under the lock, then read it from where it lives.
public sealed partial class Qcow2Driver
{
    // The last cluster decompressed: reads smaller than a cluster ask for the same one several times.
    readonly Lock _decompressedLock = new();
    ulong _decompressedEntry;
    byte[]? _decompressed;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (buffer.Length > 0)
        {
            Qcow2Mapping run;
            var slot = -1;
            await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                run = await MapAsync(BlockOperation.Read, offset, buffer.Length, cancellationToken).ConfigureAwait(false);
                if (run.Kind == Qcow2ClusterKind.Normal)
                {
                    slot = _image.HostInFlight.Register(run.HostOffset, run.HostOffset + run.Length);
                }
                else if (run.Kind == Qcow2ClusterKind.Compressed)
                {
                    // A write over this cluster may free the compressed bytes meanwhile: keep them from reuse.
                    var (_, spanStart, spanLength) = _image.Geometry.DecodeCompressed(run.Entry);
                    slot = _image.HostInFlight.Register(spanStart, spanStart + spanLength);
                }
            }
            finally
            {
                _lock.Release();
            }

            var part = buffer[..(int)run.Length];
            try
            {
                await ReadRunAsync(run, offset, part, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                if (slot >= 0)
                {
                    _image.HostInFlight.Release(slot);
                }
            }

            offset += part.Length;
            buffer = buffer[part.Length..];
        }
    }

    /// <summary>Fills <paramref name="buffer"/> with the guest bytes at <paramref name="offset"/>, all inside <paramref name="run"/>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask ReadRunAsync(Qcow2Mapping run, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        switch (run.Kind)
        {
            case Qcow2ClusterKind.Normal:
                // A data cluster past the end of the file reads as zeroes, as it does in QEMU.
                _image.File.DebugEvent(BlkdebugEvent.ReadAio);
                await _image.ReadClampedAsync(run.HostOffset, buffer, cancellationToken).ConfigureAwait(false);
                break;
            case Qcow2ClusterKind.Zero:
                buffer.Span.Clear();
                break;
            case Qcow2ClusterKind.Unallocated:
                await ReadBackingAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
                break;
            case Qcow2ClusterKind.Compressed:
                await ReadCompressedAsync(run.Entry, offset & _image.Geometry.ClusterMask, buffer, cancellationToken).ConfigureAwait(false);
                break;
        }
    }

    /// <summary>What the backing file holds at <paramref name="offset"/>; zeroes past its end or without one.</summary>
    async ValueTask ReadBackingAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var backing = Backing;
        var available = backing is null ? 0 : (int)Math.Clamp(backing.Node.Length - offset, 0, buffer.Length);
        if (available > 0)
        {
            backing!.DebugEvent(BlkdebugEvent.ReadBackingAio);
            await backing.ReadAsync(offset, buffer[..available], cancellationToken).ConfigureAwait(false);
        }

        buffer.Span[available..].Clear();
    }

    /// <summary>Decompresses the cluster a compressed descriptor names and copies bytes from <paramref name="inCluster"/> on.</summary>
    async ValueTask ReadCompressedAsync(ulong entry, long inCluster, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        lock (_decompressedLock)
        {
            if (_decompressed is not null && _decompressedEntry == entry)
            {
                _decompressed.AsSpan((int)inCluster, buffer.Length).CopyTo(buffer.Span);
                return;
            }
        }

        var g = _image.Geometry;
        var (offset, spanStart, spanLength) = g.DecodeCompressed(entry);
        var alignment = Limits.RequestAlignment;
        var from = offset / alignment * alignment;
        var to = (spanStart + spanLength + alignment - 1) / alignment * alignment;
        var compressed = _buffers.Rent((int)(to - from));
        var cluster = new byte[g.ClusterSize];
        try
        {
            _image.File.DebugEvent(BlkdebugEvent.ReadCompressed);
            await _image.ReadClampedAsync(from, compressed.Memory[..(int)(to - from)], cancellationToken).ConfigureAwait(false);
            var source = compressed.Memory.Slice((int)(offset - from), (int)(spanStart + spanLength - offset));
            var produced = Inflate(source, cluster);
            if (produced != cluster.Length)
            {
                throw BlockIOException.Create(BlockErrno.EIO, _image.Name, BlockOperation.Read, offset, spanLength,
                    $"compressed cluster at host offset {offset} inflates to {produced} bytes, not a whole cluster ({cluster.Length})");
            }
        }
        finally
        {
            _buffers.Return(compressed);
        }

        cluster.AsSpan((int)inCluster, buffer.Length).CopyTo(buffer.Span);
        lock (_decompressedLock)
        {
            _decompressed = cluster;
            _decompressedEntry = entry;
        }
    }

    /// <summary>Raw deflate (zlib window bits −12, no header), as QEMU writes compressed clusters; stops at a full cluster.</summary>
    static unsafe int Inflate(ReadOnlyMemory<byte> source, byte[] cluster)
    {
        try
        {
            using var pin = source.Pin();
            using var input = new UnmanagedMemoryStream((byte*)pin.Pointer, source.Length);
            using var inflater = new DeflateStream(input, CompressionMode.Decompress);
            var produced = 0;
            int n;
            while (produced < cluster.Length && (n = inflater.Read(cluster, produced, cluster.Length - produced)) > 0)
            {
                produced += n;
            }

            return produced;
        }
        catch (InvalidDataException)
        {
            return -1;
        }
    }

    public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        Qcow2Mapping run;
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            run = await MapAsync(BlockOperation.BlockStatus, offset, length, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }

        return run.Kind switch
        {
            Qcow2ClusterKind.Normal => new BlockStatus(BlockStatusFlags.Data | BlockStatusFlags.OffsetValid, run.Length, run.HostOffset),
            Qcow2ClusterKind.Zero when run.HasHost => new BlockStatus(BlockStatusFlags.Zero | BlockStatusFlags.OffsetValid, run.Length, run.HostOffset),
            Qcow2ClusterKind.Zero => new BlockStatus(BlockStatusFlags.Zero, run.Length),
            Qcow2ClusterKind.Compressed => new BlockStatus(BlockStatusFlags.Data, run.Length),
            Qcow2ClusterKind.Unallocated when run.HasHost => new BlockStatus(BlockStatusFlags.OffsetValid, run.Length, run.HostOffset),
            _ => new BlockStatus(BlockStatusFlags.None, run.Length),
        };
    }

    /// <summary>Looks a run up (under the lock); an inconsistency found on the way marks the image corrupt.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<Qcow2Mapping> MapAsync(BlockOperation operation, long offset, long length, CancellationToken cancellationToken)
    {
        try
        {
            return await _image.GetMappingAsync(offset, length, cancellationToken).ConfigureAwait(false);
        }
        catch (Qcow2Corruption c)
        {
            throw await _image.SignalCorruptionAsync(operation, offset, length, c.Problem, cancellationToken).ConfigureAwait(false);
        }
    }
}
