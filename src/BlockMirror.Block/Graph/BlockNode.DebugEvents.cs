using BlockMirror.Block.Drivers.Blkdebug;

namespace BlockMirror.Block.Graph;

// blkdebug events: the points a node announces to the node below it, so that fault rules can be tied to them.
public sealed partial class BlockNode
{
    /// <summary>
    /// Hands an event to this node's driver if it listens (QEMU's bdrv_debug_event: only the node itself,
    /// never further down). Called on hot paths: a type test and nothing else when no blkdebug is there.
    /// </summary>
    public void DebugEvent(BlkdebugEvent e)
    {
        if (Driver is IBlkdebugEventSink sink)
        {
            sink.OnEvent(e);
        }
    }

    /// <summary>The child that holds this node's data (QEMU's bdrv_primary_child): a format's file, a filter's child.</summary>
    public NodeEdge? PrimaryChild => File ?? FilteredChild;
}
