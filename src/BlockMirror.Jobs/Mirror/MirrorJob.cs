using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The mirror job: copies a source node to a target while writers keep writing to the source, reports
/// READY once the two are in sync, and on completion moves every parent of the source to the target
/// without losing a write (QEMU's block/mirror.c, background copy mode).
/// </summary>
/// <remarks>
/// <para><b>Why no write is lost.</b> Every write to the source marks its chunks in the job's dirty
/// bitmap when it completes. The copy loop clears a chunk's bit <i>before</i> it asks for block status
/// and reads it. A write that completed before the clear is seen by the read; one that completes after
/// it marks the chunk again, and the chunk is copied again. An in-flight bitmap keeps two copies of one
/// chunk from overlapping, so the last copy to land on the target is the newest. At completion the
/// source is drained (its parents' new requests are held), the bitmap is checked once more, the target
/// is flushed, and the parents are moved to the target before they are let go.</para>
/// <para><b>Progress.</b> <c>offset</c> counts bytes copied or zeroed on the target, zero ranges the target
/// already reads as zeroes included (the zeroing of a target before the copy is not counted); <c>len</c> is offset plus what is dirty now plus what is in
/// flight, so it grows while writers dirty the source and may count a chunk once per copy.</para>
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001",
    Justification = "The engine's buffer is freed when the copy loop ends; its cancellation source has no timer and needs no disposing.")]
public sealed partial class MirrorJob : BlockJob
{
    /// <summary>Operations in flight at once (QEMU's MAX_IN_FLIGHT).</summary>
    public const int MaxInFlight = 16;

    /// <summary>
    /// Operations in flight at once while guest writes block: the two whose writes may be at the target
    /// (<see cref="MirrorEngine.WriteBlockingCopyWrites"/>) and two reading the next. More would only hold
    /// buffer (memory) in reads queued behind the writes.
    /// </summary>
    public const int WriteBlockingMaxInFlight = MirrorEngine.WriteBlockingCopyWrites + 2;

    /// <summary>The limit on operations in flight now.</summary>
    int InFlightLimit => _writesBlocking ? WriteBlockingMaxInFlight : MaxInFlight;

    /// <summary>
    /// Bytes the background copy keeps in flight while a guest writes to the source (a write ended within
    /// the last slice), instead of buf-size. A guest's write waits at the disk behind every request queued
    /// before it, and sixteen copies of 1 MiB starve it. Measured on this project's 2-core machine
    /// (bench/live-starvation.py: fio 64 KiB random writes at 256 MiB/s, depth 4, on a 4 GiB source while
    /// the mirror copies it onto a new file): with the target on io_uring, where a read's completion issues
    /// its write at once and so keeps more requests at the disk (11.6 on average against 5 with the I/O
    /// threads), 16 MiB in flight left the guest 49 to 121 MiB/s (p99 14 to 159 ms); 4 MiB, 157 MiB/s; 2 MiB,
    /// 216 to 256 MiB/s with p99 1.9 ms, and READY in 6.9 to 7.4 s, sooner than with the threads at 16 MiB
    /// (7.9 s, guest 220 MiB/s). qemu-storage-daemon on the same run: 256 MiB/s, READY 7.4 s. A cap on
    /// operations instead of bytes would not do: near the end the dirty chunks are scattered 64 KiB
    /// pieces, and two of them at a time never caught up with the guest. With no guest writes the copy
    /// takes buf-size again within a slice. Only until READY: from then on the copy moves what the guest
    /// dirtied, no more, and must keep up with it, or the switch-over waits for the backlog.
    /// </summary>
    public const long GuestWritingMaxBytesInFlight = 2 * MaxIoBytes;

    /// <summary>Whether the background copy yields the disk to the guest now (<see cref="GuestWritingMaxBytesInFlight"/>).</summary>
    bool YieldsToGuest => !_writesBlocking && !IsReady && GuestWroteLately;

    /// <summary>Largest data copy in one operation (QEMU's MAX_IO_BYTES).</summary>
    public const long MaxIoBytes = 1 << 20;

    /// <summary>The loop yields at least this often so drains and pauses get their turn (QEMU's SLICE_TIME).</summary>
    static readonly TimeSpan SliceTime = TimeSpan.FromMilliseconds(100);

    readonly BlockGraph _graph;
    readonly BlockNode _source;
    readonly BlockNode _mirrorTop;
    readonly NodeEdge _read;
    readonly NodeEdge _target;

    // The job's own use of the source, through the filter: reads, and no resize by anyone (QEMU's job
    // BlockBackend on mirror_top). Lets go before the pivot, so the graph can change under it.
    NodeEdge? _sourceUse;
    readonly BlockNode? _base;
    readonly MirrorOptions _options;
    readonly IReadOnlyList<BlockNode> _usedNodes;

    // Active commit: the target is the base of the source's own chain, reopened read-write for the job
    // (and read-only again if the job does not complete).
    readonly bool _reopenedTarget;
    readonly long _granularity;
    readonly long _bufSize;
    readonly long _maxIo;
    readonly DirtyBitmap _dirty;

    // The dirty bitmap, the chunks in flight, the operations and the buffer, shared with the filter.
    readonly MirrorEngine _engine;

    // Copy loop only.
    long _length;
    long _cursor;
    DateTimeOffset _lastPause;
    DateTimeOffset _lastReadyFlush;

    // Bytes that reached the target (any thread); the copy loop's flushes during the bulk copy (see
    // MirrorJob.CopyLoop.cs, StartBulkFlushIfDue) look at it.
    long _copiedBytes;
    long _copiedAtBulkFlush;
    Task<bool>? _bulkFlush;
    long _targetCluster;

    // QEMU's write_zeroes_ok (bdrv_can_write_zeroes_with_unmap): the target was opened with discard=unmap
    // and unmaps on write-zeroes. Only then are zero and discard ranges free of the speed limit; on any
    // other target (qemu-storage-daemon's default, discard=ignore) they count as if copied.
    bool _zeroesUnmetered;

    // The source's and the target's lengths must not change while the job copies one onto the other.
    IDisposable? _sourceResizeBlock;
    IDisposable? _targetResizeBlock;

    BlockNode? _replaces;

    // sync=bitmap: the user's bitmap, busy while the job runs (MirrorJob.SyncBitmap.cs).
    DirtyBitmap? _syncBitmap;
    volatile bool _shouldComplete;
    DrainedSection? _drain;
    long _drainStarted;
    long _pivotPauseTicks = -1;
    bool _exited;

    MirrorJob(JobManager manager, BlockGraph graph, BlockNode source, BlockNode mirrorTop, NodeEdge target, BlockNode? @base,
        MirrorOptions options, long granularity, long bufSize, DirtyBitmap dirty, JobType type, IReadOnlyList<BlockNode> usedNodes, bool reopenedTarget)
        : base(manager, options.JobId, type, options.AutoFinalize, options.AutoDismiss, options.Speed)
    {
        _usedNodes = usedNodes;
        _reopenedTarget = reopenedTarget;
        _graph = graph;
        _source = source;
        _mirrorTop = mirrorTop;
        _read = ((MirrorTopFilter)mirrorTop.Driver).Source;
        _target = target;
        _base = @base;
        _options = options;
        _granularity = granularity;
        _bufSize = bufSize;
        _maxIo = Math.Min(bufSize, MaxIoBytes);
        _dirty = dirty;
        _engine = new MirrorEngine(this, _read, target, dirty, granularity, bufSize, options.Unmap);
        _copyMode = options.CopyMode;
        _writesBlocking = options.CopyMode == MirrorCopyMode.WriteBlocking;
    }

    public BlockNode Source => _source;

    public BlockNode Target => _target.Node;

    /// <summary>The mirror-top filter node inserted above the source.</summary>
    public BlockNode FilterNode => _mirrorTop;

    MirrorTopFilter Filter => (MirrorTopFilter)_mirrorTop.Driver;

    public long Granularity => _granularity;

    public long BufSize => _bufSize;

    /// <summary>
    /// How long the final drained section held the source's users: from the start of the drain that
    /// succeeded to the end of the graph change (null until the job has ended that way).
    /// </summary>
    public TimeSpan? PivotPause
    {
        get
        {
            var ticks = Interlocked.Read(ref _pivotPauseTicks);
            return ticks < 0 ? null : TimeSpan.FromTicks(ticks);
        }
    }

    /// <summary>Bytes dirty now (what is left to copy, in flight excluded).</summary>
    public long DirtyBytes => _dirty.DirtyBytes;

    internal override IEnumerable<BlockNode> UsedNodes => _usedNodes;

    protected override bool SupportsComplete => true;

    protected override void OnComplete()
    {
        if (!IsReady)
        {
            throw new JobException($"The active block job '{Id}' cannot be completed");
        }

        _shouldComplete = true;
        BlockWritesToFinish();
        Enter();
    }

    /// <summary>Before READY every cancel is forced: there is no consistent copy to keep.</summary>
    protected override bool OnCancel(bool force)
    {
        force = force || !IsReady;
        if (force)
        {
            _forcedCancel = true;
        }
        else
        {
            // A soft cancel in READY finishes the final sync as a complete does.
            BlockWritesToFinish();
        }

        return force;
    }

    protected override void OnForceCancelled() => _engine.CancelInFlight();

    protected override async ValueTask OnPauseAsync() => await _engine.WaitForAllIoAsync().ConfigureAwait(false);

    /// <summary>A piece of copying failed: the side's policy decides (QEMU's mirror_error_action).</summary>
    /// <remarks>The caller marked the range dirty again first; actively-synced ends.</remarks>
    internal BlockErrorAction CopyFailed(bool isRead, BlockErrno errno)
    {
        _activelySynced = false;
        return HandleIoError(isRead ? _options.OnSourceError : _options.OnTargetError, isRead, errno);
    }

    /// <summary>
    /// Bytes that reached the target, or with <paramref name="skipped"/> that needed no request (zeroes the
    /// target already reads): progress either way, but only what was written calls for the bulk flushes.
    /// </summary>
    internal void Copied(long bytes, bool skipped = false)
    {
        if (!skipped)
        {
            Interlocked.Add(ref _copiedBytes, bytes);
        }

        ProgressAdvance(bytes);
    }
}
