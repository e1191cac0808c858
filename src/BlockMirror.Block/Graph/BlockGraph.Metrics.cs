using BlockMirror.Block.Diagnostics;

namespace BlockMirror.Block.Graph;

public sealed partial class BlockGraph
{
    public BlockGraph()
    {
        // The metrics read every live graph's node statistics when a listener collects.
        BlockMetrics.Track(this);
    }
}
