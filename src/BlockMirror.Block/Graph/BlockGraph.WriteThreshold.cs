namespace BlockMirror.Block.Graph;

/// <summary>Where nodes report a passed write threshold (see <see cref="BlockNode.WriteThreshold"/>).</summary>
public sealed partial class BlockGraph
{
    /// <summary>
    /// A node's write threshold was passed. Raised on the thread of the request that passed it, before the
    /// request goes to the driver: handlers must return quickly and not send requests to the node.
    /// </summary>
    public event Action<WriteThresholdEvent>? WriteThresholdExceeded;

    internal void RaiseWriteThresholdExceeded(WriteThresholdEvent e) => WriteThresholdExceeded?.Invoke(e);
}
