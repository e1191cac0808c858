using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>One request, captured as a value so that an edge can enter the node first and run it after.</summary>
interface INodeRequest
{
    /// <summary>Runs on a node whose in-flight count already includes this request; the node exits it.</summary>
    ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken);
}

/// <summary>The request values an edge sends.</summary>
static class NodeRequests
{
    public readonly record struct Read(long Offset, Memory<byte> Buffer) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.ReadEnteredAsync(Offset, Buffer, cancellationToken);
    }

    public readonly record struct ReadVector(long Offset, IReadOnlyList<Memory<byte>> Buffers) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.ReadVectorEnteredAsync(Offset, Buffers, cancellationToken);
    }

    public readonly record struct SpliceRead(long Offset, int Length, SplicePipe Pipe) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.SpliceReadEnteredAsync(Offset, Length, Pipe, cancellationToken);
    }

    public readonly record struct Write(long Offset, ReadOnlyMemory<byte> Buffer, RequestFlags Flags) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.WriteEnteredAsync(Offset, Buffer, Flags, cancellationToken);
    }

    public readonly record struct WriteVector(long Offset, IReadOnlyList<ReadOnlyMemory<byte>> Buffers, RequestFlags Flags) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.WriteVectorEnteredAsync(Offset, Buffers, Flags, cancellationToken);
    }

    public readonly record struct WriteZeroes(long Offset, long Length, RequestFlags Flags) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.WriteZeroesEnteredAsync(Offset, Length, Flags, cancellationToken);
    }

    public readonly record struct Discard(long Offset, long Length) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.DiscardEnteredAsync(Offset, Length, cancellationToken);
    }

    public readonly record struct Flush : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.FlushEnteredAsync(cancellationToken);
    }

    public readonly record struct Truncate(long Length) : INodeRequest
    {
        public ValueTask RunEnteredAsync(BlockNode node, CancellationToken cancellationToken) =>
            node.TruncateEnteredAsync(Length, cancellationToken);
    }
}
