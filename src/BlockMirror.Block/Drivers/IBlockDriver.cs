using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// The driver contract: the requests one node serves, and nothing else.
/// </summary>
/// <remarks>
/// <para>The node validates every request before it gets here, and pads and splits it to fit: the range
/// lies inside <see cref="Length"/>, offsets and lengths are multiples of <see cref="BlockLimits.RequestAlignment"/>
/// (a length may end unaligned only at the device end), no read or write exceeds
/// <see cref="BlockLimits.MaxTransfer"/>, no write-zeroes <see cref="BlockLimits.MaxWriteZeroes"/>, no
/// discard <see cref="BlockLimits.MaxDiscard"/>, and data-changing requests never reach a read-only node.
/// Drivers may therefore only <c>Debug.Assert</c> these.</para>
/// <para>Requests may arrive concurrently, also for overlapping ranges; a driver keeps its own
/// metadata consistent but need not order overlapping data requests (neither does a disk).</para>
/// <para>A driver reaches its children only through their <see cref="Graph.NodeEdge"/>s, so that
/// every hop is validated, counted for drain, and marks dirty bitmaps.</para>
/// <para>Failures are reported as <see cref="BlockIOException"/> with an errno.</para>
/// </remarks>
public interface IBlockDriver : IAsyncDisposable
{
    /// <summary>The driver name as QEMU spells it: <c>file</c>, <c>raw</c>, <c>qcow2</c>, <c>null-co</c>, <c>blkdebug</c>.</summary>
    string DriverName { get; }

    DriverKind Kind { get; }

    DriverCapabilities Capabilities { get; }

    BlockLimits Limits { get; }

    /// <summary>Current length of the device in bytes.</summary>
    long Length { get; }

    /// <summary>For <see cref="DriverKind.Filter"/> drivers: the name of the child requests pass to.</summary>
    string? FilteredChildName => null;

    /// <summary>The file name this node stands for (QEMU's bs->filename), for query commands and messages.</summary>
    string? FileName => null;

    /// <summary>
    /// The backing file the image's own metadata names, whether or not a backing node is attached (a format
    /// such as qcow2; null for everything else). A mirror whose target names one it has not opened copies
    /// whole target clusters, so that nothing the target would read from its backing goes stale.
    /// </summary>
    string? BackingFileName => null;

    /// <summary>Fills <paramref name="buffer"/> with the bytes at <paramref name="offset"/>.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Scatter read: the buffers are filled in order from <paramref name="offset"/>.</summary>
    /// <remarks>The default reads one buffer after another; drivers with vectored I/O override it.</remarks>
    async ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        for (var i = 0; i < buffers.Count; i++)
        {
            await ReadAsync(offset, buffers[i], cancellationToken).ConfigureAwait(false);
            offset += buffers[i].Length;
        }
    }

    /// <summary>Writes <paramref name="buffer"/> at <paramref name="offset"/>. With <see cref="RequestFlags.Fua"/>
    /// only when <see cref="DriverCapabilities.CanFua"/>; otherwise the node flushes after the write.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken);

    /// <summary>Gather write: the buffers are written in order from <paramref name="offset"/>.</summary>
    async ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        for (var i = 0; i < buffers.Count; i++)
        {
            await WriteAsync(offset, buffers[i], flags, cancellationToken).ConfigureAwait(false);
            offset += buffers[i].Length;
        }
    }

    /// <summary>Makes the range read as zeroes. With <see cref="RequestFlags.MayUnmap"/> the driver may deallocate;
    /// with <see cref="RequestFlags.NoFallback"/> it fails with ENOTSUP rather than write zero buffers.</summary>
    ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken);

    /// <summary>Releases the range. Afterwards it reads as zeroes if <see cref="DriverCapabilities.DiscardZeroes"/>,
    /// otherwise as either its old contents or zeroes.</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken);

    /// <summary>Makes every completed write durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Answers for this layer only, starting at <paramref name="offset"/>. <paramref name="length"/> is a hint
    /// for how far the caller looks; the answer's length may be shorter, never longer. A layer that defers to
    /// its backing file answers <see cref="BlockStatusFlags.None"/> (not Zero); the node adds
    /// <see cref="BlockStatusFlags.Allocated"/>.
    /// </summary>
    ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken);

    /// <summary>Changes the length; new bytes read as zeroes.</summary>
    ValueTask TruncateAsync(long length, CancellationToken cancellationToken);
}
