using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The filter a mirror inserts above its source (QEMU's mirror_top). Every parent of the source sends
/// through it while the job runs, which is what lets the pivot move them all at once, and what keeps
/// the source's length fixed: a resize would invalidate the copy.
/// </summary>
sealed class MirrorTopFilter(NodeEdge source, string jobId) : FilterDriver(source)
{
    public const string Name = "mirror_top";

    public override string DriverName => Name;

    /// <summary>The edge to the source: the job reads through it, untouched by drained sections.</summary>
    public NodeEdge Source => Child;

    public override ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        throw BlockIOException.Create(BlockErrno.EBUSY, Source.Node.Name, BlockOperation.Truncate, 0, length,
            $"cannot resize a node while block job '{jobId}' mirrors it");
}
