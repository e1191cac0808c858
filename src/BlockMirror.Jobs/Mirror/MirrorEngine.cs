using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The mirror's copy engine: the dirty bitmap, the map of chunks in flight with the operations that hold
/// them, the operation pool, the copy buffer, and what a failed operation does. The job's background loop
/// and the mirror-top filter (write-blocking mode) both work through it, so that a guest write and a
/// background copy of the same chunk never overlap on the target.
/// </summary>
/// <remarks>
/// <para><b>Ranges.</b> A chunk's bit in the in-flight map is set while some operation owns it, and every
/// set bit belongs to an operation in <see cref="_ops"/>: a background copy, the loop's claim over a run
/// it is still issuing (<see cref="MirrorOpKind.Claim"/>), or a guest write in write-blocking mode. A request that needs a range waits on one
/// operation that overlaps it, then looks again; claiming a range (checking its bits and setting them) is
/// one step under <see cref="_lock"/>, because guest writes arrive on any thread.</para>
/// <para><b>Slots.</b> Background operations are limited to <see cref="MirrorJob.MaxInFlight"/> and by
/// the buffer; the loop waits for "any background operation ends" there (<see cref="WaitForIoAsync"/>).
/// Guest writes take no slot and no buffer chunk, as in QEMU: the guest's own queue depth bounds them.</para>
/// <para>No lock is held across an await. Lock order: <see cref="_lock"/>, then the dirty bitmap's own.</para>
/// </remarks>
sealed partial class MirrorEngine : IDisposable
{
    readonly MirrorJob _job;
    readonly NodeEdge _read;
    readonly NodeEdge _target;
    readonly DirtyBitmap _dirty;
    readonly long _granularity;
    readonly long _bufSize;
    readonly bool _unmap;
    readonly CancellationTokenSource _forceCancel = new();

    /// <summary>Background copy writes in flight while guest writes block (see <see cref="WriteCopyAsync"/>).</summary>
    public const int WriteBlockingCopyWrites = 2;

    readonly SemaphoreSlim _writeBlockingCopyWrites = new(WriteBlockingCopyWrites);
    readonly Lock _lock = new();
    readonly Stack<MirrorOp> _opPool = new();

    // Every operation that holds chunks of the in-flight map (initial zeroing holds none).
    readonly List<MirrorOp> _ops = new(MirrorJob.MaxInFlight + 2);
    HBitmap? _inFlightChunks;
    MirrorBufferPool? _buffers;
    int _inFlight;
    long _bytesInFlight;

    // Bytes of guest writes on their way to the target (write-blocking mode): still to do, as QEMU counts them.
    long _activeBytesInFlight;
    Exception? _ioFailure;
    volatile bool _failed;
    TaskCompletionSource? _ioWaiter;

    // Clusters of a target that names a backing file it has not opened yet, copied whole at their first
    // copy so that none of them keeps bytes it would otherwise read from that backing (QEMU's cow_bitmap).
    // One bit per chunk, set once a copy covering it has succeeded; null when not needed.
    HBitmap? _cowChunks;

    // The chunks of the target known to read zeroes (see MirrorZeroMap); a bit changes only under _lock and
    // only for chunks its changer owns in the in-flight map.
    MirrorZeroMap? _zeroChunks;

    long _length;

    public MirrorEngine(MirrorJob job, NodeEdge read, NodeEdge target, DirtyBitmap dirty, long granularity, long bufSize, bool unmap)
    {
        _job = job;
        _read = read;
        _target = target;
        _dirty = dirty;
        _granularity = granularity;
        _bufSize = bufSize;
        _unmap = unmap;
    }

    public DirtyBitmap Dirty => _dirty;

    public long Granularity => _granularity;

    /// <summary>Cancelled by a forced cancel: aborts the operations in flight.</summary>
    public CancellationToken ForceCancelToken => _forceCancel.Token;

    public void CancelInFlight() => _forceCancel.Cancel();

    /// <summary>
    /// Allocates the in-flight map and the copy buffer for a device of <paramref name="length"/> bytes;
    /// with <paramref name="cowAlignment"/> also the map of chunks copied once (see <see cref="CowCopied"/>).
    /// <paramref name="guestWriteAlignment"/>: the unit a guest write's target part is cut to (see
    /// <see cref="TargetRange"/>); 1 for none.
    /// </summary>
    public void Start(long length, bool cowAlignment, long guestWriteAlignment)
    {
        var chunks = (length + _granularity - 1) / _granularity;
        lock (_lock)
        {
            _length = length;
            _guestWriteAlignment = Math.Max(guestWriteAlignment, 1);
            _inFlightChunks = new HBitmap(chunks);
            _zeroChunks = new MirrorZeroMap(length, _granularity);
            _buffers = new MirrorBufferPool(_bufSize, _granularity);
            if (cowAlignment)
            {
                _cowChunks = new HBitmap(chunks);
            }
        }
    }

    /// <summary>Frees the copy buffer; the caller waited for every background operation.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _buffers?.Dispose();
            _buffers = null;
        }
    }

    public int InFlight
    {
        get
        {
            lock (_lock)
            {
                return _inFlight;
            }
        }
    }

    /// <summary>What the loop decides on, read at one moment: background bytes and operations in flight, free buffer chunks.</summary>
    public (long BytesInFlight, int InFlight, int FreeChunks) Snapshot()
    {
        lock (_lock)
        {
            return (_bytesInFlight + _activeBytesInFlight, _inFlight, _buffers?.FreeChunks ?? 0);
        }
    }

    // ----- The target's zeroes -----

    /// <summary>
    /// Before the copy starts (no operation holds chunks yet): [offset, offset + length) of the target is known
    /// to read zeroes (the start's look at the target, or the user's <c>target-is-zero</c> for all of it).
    /// </summary>
    public void MarkTargetZero(long offset, long length)
    {
        lock (_lock)
        {
            if (offset == 0 && length >= _length)
            {
                _zeroChunks!.MarkAll();
            }
            else
            {
                _zeroChunks!.MarkZero(offset, length);
            }
        }
    }

    /// <summary>Every chunk of the target is known to read zeroes.</summary>
    public bool TargetAllZero
    {
        get
        {
            lock (_lock)
            {
                return _zeroChunks!.All;
            }
        }
    }

    // ----- Failure -----

    /// <summary>A failure the job must end with has been recorded. Lock-free: every guest write looks at it.</summary>
    public bool IoFailed => _failed;

    /// <summary>Keeps the first failure that the job must end with.</summary>
    public void RecordFailure(Exception ex)
    {
        lock (_lock)
        {
            _ioFailure ??= ex;
            _failed = true;
        }
    }

    public void ThrowIfIoFailed()
    {
        Exception? failure;
        lock (_lock)
        {
            failure = _ioFailure;
        }

        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>
    /// A failed piece of copying: its range is dirty again (it will be retried), then the side's policy
    /// decides (the job emits BLOCK_JOB_ERROR, pauses on <c>stop</c>); <c>report</c> ends the job.
    /// </summary>
    void Failed(long offset, long length, bool isRead, BlockIOException ex)
    {
        _dirty.SetDirty(offset, length);
        if (_job.CopyFailed(isRead, ex.Errno) == BlockErrorAction.Report)
        {
            RecordFailure(ex);
        }
    }

    /// <summary>Flushes the target; a failure goes through the target's policy. True when it succeeded.</summary>
    public Task<bool> FlushTargetAsync() => FlushAsync(_target, isRead: false);

    /// <summary>
    /// Flushes the source (what the copies read there may still be only in its cache: a guest write the guest has
    /// not flushed); a failure goes through the source's policy. True when it succeeded.
    /// </summary>
    public Task<bool> FlushSourceAsync() => FlushAsync(_read, isRead: true);

    async Task<bool> FlushAsync(NodeEdge side, bool isRead)
    {
        try
        {
            await side.FlushAsync(_forceCancel.Token).ConfigureAwait(false);
            return true;
        }
        catch (BlockIOException ex)
        {
            if (_job.CopyFailed(isRead, ex.Errno) == BlockErrorAction.Report)
            {
                RecordFailure(ex);
            }

            return false;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    // ----- Waiting -----

    /// <summary>Waits until some background operation ends (QEMU's mirror_wait_for_free_in_flight_slot). Returns at once if none is in flight.</summary>
    public Task WaitForIoAsync()
    {
        lock (_lock)
        {
            if (_inFlight == 0)
            {
                return Task.CompletedTask;
            }

            _ioWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _ioWaiter.Task;
        }
    }

    public async Task WaitForAllIoAsync()
    {
        while (InFlight > 0)
        {
            await WaitForIoAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Waits until no operation holds a chunk of [offset, end) (QEMU's mirror_wait_on_conflicts).</summary>
    public async Task WaitForRangeAsync(long offset, long end)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (!RangeInFlightLocked(offset, end))
                {
                    return;
                }

                wait = WaiterLocked(offset, end);
            }

            await wait.ConfigureAwait(false);
        }
    }

    /// <summary>Whether some operation holds a chunk of [offset, end) now.</summary>
    public bool InFlightWithin(long offset, long end)
    {
        lock (_lock)
        {
            return _inFlightChunks is { } && RangeInFlightLocked(offset, Math.Min(end, _length));
        }
    }

    bool RangeInFlightLocked(long offset, long end)
    {
        var first = offset / _granularity;
        var endChunk = (end + _granularity - 1) / _granularity;
        var next = _inFlightChunks!.NextSet(first);
        return next >= 0 && next < endChunk;
    }

    /// <summary>
    /// The task to wait on for a range some operation holds: that of the first listed operation that
    /// overlaps it. Every set bit belongs to a listed operation; should that ever not hold, any ending
    /// operation wakes the waiter, which then looks again.
    /// </summary>
    Task WaiterLocked(long offset, long end)
    {
        foreach (var op in _ops)
        {
            if (op.Offset < end && offset < op.Offset + op.Length)
            {
                op.Waiters ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                return op.Waiters.Task;
            }
        }

        System.Diagnostics.Debug.Fail("An in-flight chunk without an operation holding it");
        _ioWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        return _ioWaiter.Task;
    }

    /// <summary>Takes <paramref name="op"/> off the list, frees its chunks, and wakes whoever waits on it or on any operation.</summary>
    void ReleaseLocked(MirrorOp op, out TaskCompletionSource? waiters, out TaskCompletionSource? anyWaiter)
    {
        var (first, count) = op.Chunks(_granularity);
        _inFlightChunks?.Reset(first, count);
        _ops.Remove(op);
        waiters = op.Waiters;
        op.Waiters = null;
        anyWaiter = _ioWaiter;
        _ioWaiter = null;
    }

    // ----- The loop's claims -----

    /// <summary>
    /// From the dirty chunk at <paramref name="offset"/>, claims the run of dirty chunks after it (up to
    /// buf-size and <paramref name="maxBytes"/>, stopping at one in flight), grown to whole target clusters
    /// where a target's backing is not open yet, and clears their dirty bits. The claim is listed until <see cref="EndClaim"/>, so that
    /// requests meeting the run wait until its operations are issued.
    /// </summary>
    public async Task<MirrorOp> ClaimRunAsync(long offset, long targetCluster, long maxBytes)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (TryClaimLocked(offset, targetCluster, maxBytes, out var claim, out var conflictStart, out var conflictEnd))
                {
                    return claim;
                }

                wait = WaiterLocked(conflictStart, conflictEnd);
            }

            await wait.ConfigureAwait(false);
        }
    }

    bool TryClaimLocked(long offset, long targetCluster, long maxBytes, out MirrorOp claim, out long conflictStart, out long conflictEnd)
    {
        claim = null!;
        (conflictStart, conflictEnd) = (offset, offset + _granularity);
        var inFlight = _inFlightChunks!;
        if (inFlight.Get(offset / _granularity))
        {
            return false;
        }

        // Extend over the dirty chunks that follow, up to maxBytes (buf-size at most), stopping at one in
        // flight (it must finish first). Both bitmaps are read a word at a time: on a disk dirtied whole (a
        // target that does not read as zeroes) every claim runs the full length.
        var end = Math.Min(offset + _granularity, _length);
        var maxEnd = Math.Min(offset + Math.Max(1, Math.Min(_bufSize, maxBytes) / _granularity) * _granularity, _length);
        if (end < maxEnd)
        {
            end = Math.Max(end, _dirty.DirtyRunEnd(end, maxEnd));
            var busy = inFlight.NextSet(offset / _granularity + 1);
            if (busy >= 0 && busy * _granularity < end)
            {
                end = busy * _granularity;
            }
        }
        if (_cowChunks is { } cow && (!cow.Get(offset / _granularity) || !cow.Get((end - 1) / _granularity)))
        {
            // First copy into this part of a target whose backing is not open: take whole target
            // clusters, clean chunks around the dirty ones included, so the target never allocates a
            // cluster holding only part of its data (the rest would be read from the backing later).
            // Both ends are looked at, as QEMU's mirror_cow_align does: a run may start in a cluster
            // copied before and end in one never copied (clusters in between it covers whole).
            (offset, end) = (offset - offset % targetCluster, Math.Min((end + targetCluster - 1) / targetCluster * targetCluster, _length));
            if (RangeInFlightLocked(offset, end))
            {
                (conflictStart, conflictEnd) = (offset, end);
                return false;
            }
        }

        // Clear the dirty bits before asking for block status and reading: a write that completes after
        // this point marks the chunks again and they are copied again. Mark them in flight in the same
        // step: no other operation may touch them until this one is done.
        _dirty.ResetDirty(offset, end - offset);
        claim = RentLocked(offset, end - offset, MirrorMethod.Copy, MirrorOpKind.Claim);
        var (first, count) = claim.Chunks(_granularity);
        inFlight.Set(first, count);
        _ops.Add(claim);
        return true;
    }

    /// <summary>Every operation of a claimed run has been issued (or given back): requests waiting on the run look again.</summary>
    public void EndClaim(MirrorOp claim)
    {
        TaskCompletionSource? waiters;
        lock (_lock)
        {
            // The run's chunks now belong to its operations (or were given back): only the listing goes.
            _ops.Remove(claim);
            waiters = claim.Waiters;
            claim.Waiters = null;
            _opPool.Push(claim);
        }

        waiters?.TrySetResult();
    }

    /// <summary>Gives the chunks of a claimed run not yet issued back to the bitmap: they were cleared by the claim.</summary>
    public void ReleaseUnissued(long offset, long end)
    {
        _dirty.SetDirty(offset, end - offset);
        lock (_lock)
        {
            var first = offset / _granularity;
            _inFlightChunks!.Reset(first, (end + _granularity - 1) / _granularity - first);
        }
    }

    /// <summary>Null when the target needs no COW alignment; else whether the chunk has been copied once.</summary>
    public bool? CowCopied(long offset)
    {
        lock (_lock)
        {
            return _cowChunks?.Get(offset / _granularity);
        }
    }

    MirrorOp RentLocked(long offset, long length, MirrorMethod method, MirrorOpKind kind)
    {
        var op = _opPool.Count > 0 ? _opPool.Pop() : new MirrorOp();
        op.Offset = offset;
        op.Length = length;
        op.Method = method;
        op.Kind = kind;
        op.InitialZeroing = false;
        op.SkipIo = false;
        op.KeepDirty = false;
        return op;
    }
}
