using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.TestKit;

/// <summary>
/// A minimal copy-on-write format for tests of chain logic: 4 KiB clusters kept in memory, a cluster
/// is allocated by its first write (copying the rest of the cluster from the backing node), and
/// unallocated clusters read from the backing node, or zeroes without one. Requests must be 4 KiB aligned.
/// </summary>
public sealed class OverlayDriver : IBlockDriver
{
    public const int ClusterSize = 4096;

    readonly Lock _lock = new();
    readonly Dictionary<long, byte[]> _clusters = [];
    readonly NodeEdge? _backing;
    readonly long _length;

    OverlayDriver(long length, NodeEdge? backing)
    {
        _length = length;
        _backing = backing;
    }

    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? name, long length, BlockNode? backing) =>
        graph.CreateNodeAsync(name, false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new OverlayDriver(length, backing is null ? null : node.AttachChild(ChildNames.Backing, backing))));

    public string DriverName => "test-overlay";

    public DriverKind Kind => DriverKind.Format;

    public DriverCapabilities Capabilities { get; } = new() { SupportsBacking = true, ZeroInit = true };

    public BlockLimits Limits { get; } = new(RequestAlignment: ClusterSize, ClusterSize: ClusterSize);

    public long Length => _length;

    /// <summary>Is the cluster holding <paramref name="offset"/> allocated in this layer?</summary>
    public bool IsAllocated(long offset)
    {
        lock (_lock)
        {
            return _clusters.ContainsKey(offset / ClusterSize);
        }
    }

    byte[]? Cluster(long index)
    {
        lock (_lock)
        {
            return _clusters.GetValueOrDefault(index);
        }
    }

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        for (var done = 0; done < buffer.Length; done += ClusterSize)
        {
            var chunk = buffer.Slice(done, ClusterSize);
            if (Cluster((offset + done) / ClusterSize) is { } data)
            {
                data.CopyTo(chunk);
            }
            else
            {
                await ReadBelowAsync(offset + done, chunk, cancellationToken);
            }
        }
    }

    async ValueTask ReadBelowAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        buffer.Span.Clear();
        if (_backing is null || offset >= _backing.Node.Length)
        {
            return;
        }

        var available = (int)Math.Min(buffer.Length, _backing.Node.Length - offset);
        await _backing.ReadAsync(offset, buffer[..available], cancellationToken);
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        for (var done = 0; done < buffer.Length; done += ClusterSize)
        {
            var data = new byte[ClusterSize];
            buffer.Slice(done, ClusterSize).CopyTo(data);
            lock (_lock)
            {
                _clusters[(offset + done) / ClusterSize] = data;
            }
        }

        await Task.Yield();
    }

    public ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            for (var index = offset / ClusterSize; index < (offset + length) / ClusterSize; index++)
            {
                _clusters[index] = new byte[ClusterSize];
            }
        }

        return ValueTask.CompletedTask;
    }

    /// <summary>Discard deallocates: the range falls through to the backing node again.</summary>
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            for (var index = offset / ClusterSize; index < (offset + length) / ClusterSize; index++)
            {
                _clusters.Remove(index);
            }
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var first = offset / ClusterSize;
        var allocated = Cluster(first) is not null;
        var end = offset + length;
        var position = (first + 1) * ClusterSize;
        while (position < end && (Cluster(position / ClusterSize) is not null) == allocated)
        {
            position += ClusterSize;
        }

        var flags = allocated ? BlockStatusFlags.Data : BlockStatusFlags.None;
        return ValueTask.FromResult(new BlockStatus(flags, Math.Min(position, end) - offset));
    }

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        throw new System.Diagnostics.UnreachableException("CanTruncate is false");

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
