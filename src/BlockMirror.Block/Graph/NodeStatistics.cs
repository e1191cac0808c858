using System.Diagnostics;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// What one node's requests did, as QEMU's block accounting counts it (BlockAcctStats): per kind of request
/// (read, write, write-zeroes, discard, flush) the bytes and operations that succeeded, the time they took,
/// the ones that failed and the ones refused as invalid; the time of the last request, and the highest
/// offset written. Counted by the node's request path (BlockNode.Statistics.cs) for every request that
/// reaches the node, from an export, a job, or a parent node.
/// </summary>
/// <remarks>
/// Plain interlocked adds on preallocated arrays: a request costs two timestamps and three or four adds,
/// allocates nothing and takes no lock. Readers see each counter exactly, but not all of them at one instant.
/// </remarks>
public sealed class NodeStatistics
{
    /// <summary>The kinds counted, the first values of <see cref="BlockOperation"/>.</summary>
    public const int Kinds = (int)BlockOperation.Flush + 1;

    // Per kind; indexed by (int)BlockOperation.
    readonly long[] _bytes = new long[Kinds];
    readonly long[] _operations = new long[Kinds];
    readonly long[] _totalTimeNs = new long[Kinds];
    readonly long[] _failed = new long[Kinds];
    readonly long[] _invalid = new long[Kinds];

    // Stopwatch timestamp of the last request accounted; 0 before the first.
    long _lastAccess;
    long _writeHighestOffset;

    public long Bytes(BlockOperation kind) => Volatile.Read(ref _bytes[Index(kind)]);

    public long Operations(BlockOperation kind) => Volatile.Read(ref _operations[Index(kind)]);

    public long TotalTimeNs(BlockOperation kind) => Volatile.Read(ref _totalTimeNs[Index(kind)]);

    public long Failed(BlockOperation kind) => Volatile.Read(ref _failed[Index(kind)]);

    public long Invalid(BlockOperation kind) => Volatile.Read(ref _invalid[Index(kind)]);

    /// <summary>The end of the highest range a write or write-zeroes asked for, failed ones too (QEMU's wr_highest_offset).</summary>
    public long WriteHighestOffset => Volatile.Read(ref _writeHighestOffset);

    /// <summary>Time since the last request was accounted; null when none was.</summary>
    public TimeSpan? IdleTime =>
        Volatile.Read(ref _lastAccess) is var last and not 0 ? Stopwatch.GetElapsedTime(last) : null;

    /// <summary>A request ended well: <paramref name="bytes"/> moved, in the time since <paramref name="started"/>.</summary>
    internal void Completed(BlockOperation kind, long bytes, long started, long now)
    {
        var i = Index(kind);
        Interlocked.Add(ref _bytes[i], bytes);
        Interlocked.Increment(ref _operations[i]);
        Interlocked.Add(ref _totalTimeNs[i], Nanoseconds(now - started));
        Volatile.Write(ref _lastAccess, now);
    }

    /// <summary>
    /// A request failed after it was accepted. Its time counts, as QEMU counts it with account_failed on
    /// (which we report), but not its bytes.
    /// </summary>
    internal void FailedAfter(BlockOperation kind, long started, long now)
    {
        var i = Index(kind);
        Interlocked.Increment(ref _failed[i]);
        Interlocked.Add(ref _totalTimeNs[i], Nanoseconds(now - started));
        Volatile.Write(ref _lastAccess, now);
    }

    /// <summary>A request was refused before it reached the driver (out of range, read-only node).</summary>
    internal void Refused(BlockOperation kind)
    {
        Interlocked.Increment(ref _invalid[Index(kind)]);
        Volatile.Write(ref _lastAccess, Stopwatch.GetTimestamp());
    }

    internal void Wrote(long end) => Atomic.Max(ref _writeHighestOffset, end);

    /// <summary>Stopwatch ticks to nanoseconds; on Linux a tick is a nanosecond already.</summary>
    public static long Nanoseconds(long ticks) =>
        Stopwatch.Frequency == 1_000_000_000 ? ticks : (long)(ticks * (1e9 / Stopwatch.Frequency));

    static int Index(BlockOperation kind)
    {
        Debug.Assert((int)kind < Kinds, $"{kind} is not accounted");
        return (int)kind;
    }
}
