using System.Collections.Concurrent;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>A pass-through filter that records every request it is given, with its flags: what reached this layer.</summary>
sealed class RecordingFilter : FilterDriver
{
    readonly ConcurrentQueue<(BlockOperation Operation, RequestFlags Flags)> _calls = new();

    RecordingFilter(NodeEdge child)
        : base(child)
    {
    }

    public static async ValueTask<(BlockNode Node, RecordingFilter Filter)> OpenAsync(BlockGraph graph, string name, BlockNode child)
    {
        var node = await graph.CreateNodeAsync(name, false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new RecordingFilter(node.AttachChild(ChildNames.File, child))));
        return (node, (RecordingFilter)node.Driver);
    }

    public override string DriverName => "test-recorder";

    public IReadOnlyList<(BlockOperation Operation, RequestFlags Flags)> Calls => [.. _calls];

    public int Count(BlockOperation operation) => _calls.Count(c => c.Operation == operation);

    public int Total => _calls.Count;

    public void Clear() => _calls.Clear();

    void Add(BlockOperation operation, RequestFlags flags = RequestFlags.None) => _calls.Enqueue((operation, flags));

    public override ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        Add(BlockOperation.Read);
        return base.ReadAsync(offset, buffer, cancellationToken);
    }

    public override ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        Add(BlockOperation.Read);
        return base.ReadVectorAsync(offset, buffers, cancellationToken);
    }

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        Add(BlockOperation.Write, flags);
        return base.WriteAsync(offset, buffer, flags, cancellationToken);
    }

    public override ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        Add(BlockOperation.Write, flags);
        return base.WriteVectorAsync(offset, buffers, flags, cancellationToken);
    }

    public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        Add(BlockOperation.WriteZeroes, flags);
        return base.WriteZeroesAsync(offset, length, flags, cancellationToken);
    }

    public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        Add(BlockOperation.Discard);
        return base.DiscardAsync(offset, length, cancellationToken);
    }

    public override ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        Add(BlockOperation.Flush);
        return base.FlushAsync(cancellationToken);
    }

    public override ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        Add(BlockOperation.BlockStatus);
        return base.GetBlockStatusAsync(offset, length, cancellationToken);
    }

    public override ValueTask TruncateAsync(long length, CancellationToken cancellationToken)
    {
        Add(BlockOperation.Truncate);
        return base.TruncateAsync(length, cancellationToken);
    }
}
