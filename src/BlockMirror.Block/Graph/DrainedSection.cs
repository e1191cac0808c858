namespace BlockMirror.Block.Graph;

/// <summary>
/// A drained section on one node (QEMU's bdrv_drained_begin/end): while it lasts, root edges that
/// reach the node hold new requests. Ending it lets them go, to whatever node their edge points at then.
/// </summary>
public sealed class DrainedSection : IDisposable
{
    readonly BlockGraph _graph;
    int _ended;

    internal DrainedSection(BlockGraph graph, BlockNode node)
    {
        _graph = graph;
        Node = node;
    }

    public BlockNode Node { get; }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _ended, 1) == 0)
        {
            _graph.EndDrain(Node);
        }
    }
}
