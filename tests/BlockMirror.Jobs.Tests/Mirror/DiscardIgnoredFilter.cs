using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// A target as qemu-storage-daemon opens a --blockdev by default (discard=ignore): write-zeroes stays cheap
/// but never unmaps, and discards are ignored. QEMU's mirror then charges zero ranges to the speed limit.
/// </summary>
sealed class DiscardIgnoredFilter(NodeEdge child) : FilterDriver(child)
{
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string name, BlockNode child) =>
        graph.CreateNodeAsync(name, false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new DiscardIgnoredFilter(node.AttachChild(ChildNames.File, child))));

    public override string DriverName => "test-discard-ignored";

    public override DriverCapabilities Capabilities => Child.Node.Capabilities with
    {
        CanZeroEfficiently = true, CanUnmapOnZero = false, CanDiscard = false, DiscardZeroes = false,
    };
}
