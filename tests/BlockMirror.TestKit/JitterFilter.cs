using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.TestKit;

/// <summary>
/// A test filter that makes requests take turns unpredictably: before passing a request on it may yield
/// the thread or wait a little, chosen by a seeded generator. Memory-backed nodes otherwise complete
/// synchronously, and races between copies and writes would never happen.
/// </summary>
public sealed class JitterFilter : FilterDriver
{
    readonly Lock _lock = new();
    readonly Random _random;

    JitterFilter(NodeEdge child, int seed)
        : base(child) => _random = new Random(seed);

    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? name, BlockNode child, int seed) =>
        graph.CreateNodeAsync(name, false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new JitterFilter(node.AttachChild(ChildNames.File, child), seed)));

    public override string DriverName => "test-jitter";

    async ValueTask JitterAsync()
    {
        int roll;
        lock (_lock)
        {
            roll = _random.Next(100);
        }

        if (roll < 40)
        {
            await Task.Yield();
        }
        else if (roll < 42)
        {
            await Task.Delay(1);
        }
    }

    public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        await JitterAsync();
        await base.ReadAsync(offset, buffer, cancellationToken);
    }

    public override async ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        await JitterAsync();
        await base.ReadVectorAsync(offset, buffers, cancellationToken);
    }

    public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        await JitterAsync();
        await base.WriteAsync(offset, buffer, flags, cancellationToken);
    }

    public override async ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        await JitterAsync();
        await base.WriteVectorAsync(offset, buffers, flags, cancellationToken);
    }

    public override async ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        await JitterAsync();
        await base.WriteZeroesAsync(offset, length, flags, cancellationToken);
    }

    public override async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        await JitterAsync();
        await base.DiscardAsync(offset, length, cancellationToken);
    }

    public override async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        await JitterAsync();
        return await base.GetBlockStatusAsync(offset, length, cancellationToken);
    }
}
