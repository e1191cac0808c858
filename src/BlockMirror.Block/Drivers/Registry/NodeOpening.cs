using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// One node being opened: its driver opens its children through this, so that the children it opened
/// inline go away again when it fails to open (an inline child belongs to its parent).
/// </summary>
public sealed class NodeOpening
{
    readonly List<BlockNode> _inlineChildren = [];

    internal NodeOpening(BlockGraph graph, CancellationToken cancellationToken)
    {
        Graph = graph;
        CancellationToken = cancellationToken;
    }

    public BlockGraph Graph { get; }

    public CancellationToken CancellationToken { get; }

    /// <summary>The existing node, or the inline one opened now.</summary>
    public async ValueTask<BlockNode> OpenChildAsync(ChildPlan child)
    {
        if (child.Existing is { } existing)
        {
            return existing;
        }

        var node = await DriverRegistry.OpenAsync(Graph, child.Inline!, CancellationToken).ConfigureAwait(false);
        _inlineChildren.Add(node);
        return node;
    }

    /// <summary>Closes the inline children opened so far, the last first.</summary>
    internal async ValueTask CloseInlineChildrenAsync()
    {
        for (var i = _inlineChildren.Count - 1; i >= 0; i--)
        {
            await Graph.RemoveNodeAsync(_inlineChildren[i]).ConfigureAwait(false);
        }
    }
}
