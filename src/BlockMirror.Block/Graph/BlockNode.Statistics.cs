using System.Diagnostics;
using BlockMirror.Block.Diagnostics;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// The node's accounting of its requests (<see cref="NodeStatistics"/>, read by QMP's query-blockstats and
/// the metrics): the request bodies in BlockNode.cs take a timestamp once a request is accepted and call
/// these when it ends; validation counts the requests it refuses. Kept here, apart from the request bodies,
/// so that other hooks on the write path do not collide with it.
/// </summary>
public sealed partial class BlockNode
{
    /// <summary>What this node's requests did since it was opened.</summary>
    public NodeStatistics Statistics { get; } = new();

    /// <summary>Call when a request has been accepted; give the result to <see cref="Accounted"/> or <see cref="AccountFailure"/>.</summary>
    static long AccountingStart() => Stopwatch.GetTimestamp();

    /// <summary>A request of <paramref name="length"/> bytes at <paramref name="offset"/> ended well.</summary>
    void Accounted(BlockOperation kind, long offset, long length, long started)
    {
        var now = Stopwatch.GetTimestamp();
        Statistics.Completed(kind, length, started, now);
        NoteWrite(kind, offset, length);
        RecordDuration(kind, started, now);
    }

    /// <summary>
    /// A request failed after it was accepted. Returns false, so that it serves as an exception filter that
    /// counts and lets the exception pass on unchanged.
    /// </summary>
    bool AccountFailure(BlockOperation kind, long offset, long length, long started)
    {
        var now = Stopwatch.GetTimestamp();
        Statistics.FailedAfter(kind, started, now);
        NoteWrite(kind, offset, length);
        RecordDuration(kind, started, now);
        return false;
    }

    /// <summary>The exception for a request validation refuses, counted as invalid.</summary>
    BlockIOException RefuseInvalid(BlockErrno errno, BlockOperation operation, long offset, long length, string detail)
    {
        if ((int)operation < NodeStatistics.Kinds)
        {
            Statistics.Refused(operation);
        }

        return Refuse(errno, operation, offset, length, detail);
    }

    void NoteWrite(BlockOperation kind, long offset, long length)
    {
        // QEMU moves wr_highest_offset for writes and write-zeroes, failed ones too, but not for discards.
        if (kind is BlockOperation.Write or BlockOperation.WriteZeroes)
        {
            Statistics.Wrote(offset + length);
        }
    }

    void RecordDuration(BlockOperation kind, long started, long now)
    {
        var histogram = BlockMetrics.RequestDuration;
        if (histogram.Enabled)
        {
            histogram.Record(Stopwatch.GetElapsedTime(started, now).TotalSeconds,
                new KeyValuePair<string, object?>("node", Name), new KeyValuePair<string, object?>("op", BlockMetrics.OperationName(kind)));
        }
    }
}
