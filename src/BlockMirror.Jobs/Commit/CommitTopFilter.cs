using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Commit;

/// <summary>
/// The filter a commit inserts above its top (QEMU's commit_top): the image above reaches the top through
/// it while the job runs, so that at the end one edge moves to the base and the top drops out.
/// </summary>
sealed class CommitTopFilter(NodeEdge top) : FilterDriver(top)
{
    public const string Name = "commit_top";

    public override string DriverName => Name;

    /// <summary>The edge to the top: the job reads through it, untouched by drained sections.</summary>
    public NodeEdge Top => Child;
}
