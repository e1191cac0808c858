using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The filter a mirror inserts above its source (QEMU's mirror_top). Every parent of the source sends
/// through it while the job runs, which is what lets the pivot move them all at once. (The job keeps
/// the source's and the target's lengths fixed with resize blockers on both nodes.)
/// </summary>
sealed class MirrorTopFilter(NodeEdge source) : FilterDriver(source)
{
    public const string Name = "mirror_top";

    public override string DriverName => Name;

    /// <summary>The edge to the source: the job reads through it, untouched by drained sections.</summary>
    public NodeEdge Source => Child;
}
