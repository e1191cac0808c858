using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// A disk's volatile write cache in front of a node: writes are held (and read back) here and reach the node
/// below only when flushed, so the node below holds at every moment what a power loss would leave.
/// </summary>
sealed class VolatileCacheFilter : FilterDriver
{
    readonly Lock _lock = new();
    readonly List<(long Offset, byte[] Data)> _pending = [];
    readonly SemaphoreSlim _flushing = new(1, 1);

    VolatileCacheFilter(NodeEdge child)
        : base(child)
    {
    }

    public static async ValueTask<BlockNode> OpenAsync(BlockGraph graph, string name, BlockNode child) =>
        await graph.CreateNodeAsync(name, false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new VolatileCacheFilter(node.AttachChild(ChildNames.File, child))));

    public override string DriverName => "test-volatile-cache";

    // Zeroes and discards are cached as written zeroes: what the node below would read after them.
    public override DriverCapabilities Capabilities => Child.Node.Capabilities with { CanFua = false };

    public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        await base.ReadAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
        lock (_lock)
        {
            foreach (var (start, data) in _pending)
            {
                var from = Math.Max(offset, start);
                var to = Math.Min(offset + buffer.Length, start + data.Length);
                if (from < to)
                {
                    data.AsSpan((int)(from - start), (int)(to - from)).CopyTo(buffer.Span[(int)(from - offset)..]);
                }
            }
        }
    }

    public override async ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        foreach (var buffer in buffers)
        {
            await ReadAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
            offset += buffer.Length;
        }
    }

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken) =>
        Hold(offset, buffer.ToArray());

    public override ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken) =>
        Hold(offset, [.. buffers.SelectMany(b => b.ToArray())]);

    public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken) =>
        Hold(offset, new byte[length]);

    public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken) =>
        Hold(offset, new byte[length]);

    public override async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        // What was written before the flush began goes down, one flush at a time; it stays readable here until it has.
        await _flushing.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            List<(long Offset, byte[] Data)> held;
            lock (_lock)
            {
                held = [.. _pending];
            }

            foreach (var (offset, data) in held)
            {
                await base.WriteAsync(offset, data, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            }

            await base.FlushAsync(cancellationToken).ConfigureAwait(false);
            lock (_lock)
            {
                _pending.RemoveRange(0, held.Count);
            }
        }
        finally
        {
            _flushing.Release();
        }
    }

    ValueTask Hold(long offset, byte[] data)
    {
        lock (_lock)
        {
            _pending.Add((offset, data));
        }

        return ValueTask.CompletedTask;
    }
}
