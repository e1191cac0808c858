namespace BlockMirror.Block.Graph;

public sealed partial class BlockGraph
{
    /// <summary>User-created objects by id (QEMU's <c>/objects</c>), for nodes that name one in their options.</summary>
    public UserObjects Objects { get; } = new();
}
