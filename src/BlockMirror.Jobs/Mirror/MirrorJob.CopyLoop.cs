using System.Runtime.CompilerServices;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>The background loop: initial dirtying, then passes over the dirty bitmap until in sync, then the final drained look.</summary>
public sealed partial class MirrorJob
{
    protected override async Task RunAsync()
    {
        if (IsCancelled)
        {
            return;
        }

        _length = _source.Length;
        // QEMU's mirror_run checks this first, before a zero-length source becomes READY: the job fails
        // (BLOCK_JOB_COMPLETED carries the error) before it writes anything. An active commit (the target is
        // the base) grew its base beforehand.
        if (!ReferenceEquals(_base, _target.Node) && _length != _target.Node.Length)
        {
            throw new JobException("Source and target image have different sizes");
        }

        if (_length == 0)
        {
            // Nothing to copy: ready at once, then wait to be completed or cancelled. Nothing can differ
            // either, so QEMU calls it actively synced whatever the copy mode.
            TransitionToReady();
            _activelySynced = true;
            while (!IsCancelRequested && !_shouldComplete)
            {
                // A timed sleep, not a yield: a complete that lands between the check and the park
                // would find the body busy and not wake it, and a yield would then wait forever.
                await SleepAsync(SliceTime).ConfigureAwait(false);
            }

            if (!IsCancelled)
            {
                _drain = await _graph.DrainAsync(_source).ConfigureAwait(false);
            }

            return;
        }

        _targetCluster = Math.Max(_target.Node.Limits.ClusterSize, 1);
        var targetCaps = _target.Node.Capabilities;
        _zeroesUnmetered = targetCaps.CanDiscard && targetCaps.CanUnmapOnZero;
        _engine.Start(_length, NeedsCowAlignment(_target.Node, _granularity), GuestWriteAlignment(_target.Node));

        try
        {
            _lastPause = Time.GetUtcNow();
            // sync=bitmap starts from the user's bitmap (merged at the start), none from nothing.
            // A resume starts from its write-intent log (read in at the start).
            if (!_options.Resume && _options.Sync is MirrorSyncMode.Full or MirrorSyncMode.Top)
            {
                await DirtyInitAsync().ConfigureAwait(false);
                if (IsCancelled)
                {
                    return;
                }
            }

            // Only now may guest writes use the engine (QEMU sets the filter's job at the same point): before,
            // the initial dirtying marks whole ranges that a guest write's clear must not race with.
            Filter.Attach(this);
            StartMeasuring();
            await CopyLoopAsync().ConfigureAwait(false);
        }
        finally
        {
            Filter.Detach();

            // Only a failure or a forced cancel leaves operations in flight here.
            await _engine.WaitForAllIoAsync().ConfigureAwait(false);
            await WaitBulkFlushAsync().ConfigureAwait(false);
            _engine.Dispose();
        }
    }

    async Task CopyLoopAsync()
    {
        while (true)
        {
            _engine.ThrowIfIoFailed();
            await PausePointAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            RunAdaptivePolicy();
            await ClearWriteIntentLogAsync().ConfigureAwait(false);
            var dirty = _dirty.DirtyBytes;
            var (bytesInFlight, inFlight, freeChunks) = _engine.Snapshot();
            ProgressSetRemaining(bytesInFlight + dirty);

            var delay = TimeSpan.Zero;

            // Yield with no I/O pending at least once per slice, so drains and pauses are not starved.
            if (Time.GetUtcNow() - _lastPause < SliceTime && IoStatus == IoStatus.Ok)
            {
                if (inFlight >= InFlightLimit || freeChunks == 0 || (dirty == 0 && inFlight > 0)
                    || OverGuestShare(bytesInFlight, inFlight, adding: 1))
                {
                    await _engine.WaitForIoAsync().ConfigureAwait(false);
                    continue;
                }

                if (dirty != 0)
                {
                    delay = await IterateAsync().ConfigureAwait(false);
                }
            }

            if (!IsReady)
            {
                StartBulkFlushIfDue();
            }

            var shouldComplete = false;
            if (_engine.InFlight == 0 && dirty == 0)
            {
                // Nothing in flight: set what remains afresh, so len equals offset at READY and at the end
                // (the turn's snapshot may have missed an operation ending between its two counters).
                ProgressSetRemaining(_dirty.DirtyBytes);
                if (!IsReady)
                {
                    // In sync: make what was copied durable, then announce READY once. From now on a
                    // soft cancel finishes the final sync and leaves a consistent copy.
                    await WaitBulkFlushAsync().ConfigureAwait(false);
                    if (!await _engine.FlushTargetAsync().ConfigureAwait(false))
                    {
                        continue;
                    }

                    TransitionToReady();
                    _lastReadyFlush = Time.GetUtcNow();
                }
                else if (!_shouldComplete && !IsCancelRequested && Time.GetUtcNow() - _lastReadyFlush >= SliceTime)
                {
                    // In READY, make the copies durable as they land, once a slice (a flush with nothing
                    // new is skipped by the node): the flush at the switch, made while the writers are
                    // held, then has at most a slice of copies to write back. QEMU flushes only then, and
                    // under a writer its switch holds the guest 50 to 400 ms.
                    _lastReadyFlush = Time.GetUtcNow();
                    if (!await _engine.FlushTargetAsync().ConfigureAwait(false))
                    {
                        continue;
                    }
                }

                MarkActivelySyncedIfClean();
                shouldComplete = _shouldComplete || IsCancelRequested;
                dirty = _dirty.DirtyBytes;
            }

            if (dirty == 0 && shouldComplete)
            {
                // Writers may have dirtied the source since the last look: hold them, look once more,
                // and flush. Only then is the target a complete copy. The section stays open until the
                // graph change in PrepareAsync (or AbortAsync) ends it.
                var drainStarted = Time.GetTimestamp();
                var drain = await _graph.DrainAsync(_source).ConfigureAwait(false);
                if (_dirty.DirtyBytes > 0 || !await _engine.FlushTargetAsync().ConfigureAwait(false))
                {
                    drain.Dispose();
                    continue;
                }

                _drain = drain;
                _drainStarted = drainStarted;
                return;
            }

            if (!IsReady)
            {
                await SleepAsync(delay).ConfigureAwait(false);
                if (IsCancelled)
                {
                    return;
                }
            }
            else if (!shouldComplete)
            {
                // The speed limit holds after READY too (QEMU's mirror_run drops the delay once synced, so
                // its limit stops at READY): a user who limits the copy means while the job runs at all.
                await SleepAsync(_engine.InFlight == 0 && dirty == 0 ? SliceTime : delay).ConfigureAwait(false);
            }

            _lastPause = Time.GetUtcNow();
        }
    }

    /// <summary>
    /// One pass: from the next dirty chunk, claim the run of dirty chunks after it (up to buf-size), and
    /// issue operations over it by block status. Returns how long the rate limit wants the loop to wait.
    /// </summary>
    async Task<TimeSpan> IterateAsync()
    {
        var offset = _dirty.NextDirty(_cursor);
        if (offset < 0)
        {
            _cursor = 0;
            offset = _dirty.NextDirty(0);
            if (offset < 0)
            {
                return TimeSpan.Zero;
            }
        }

        offset -= offset % _granularity;

        // Copy something at least: wait until the run's first chunk is free; the claim then stops the
        // run at the next chunk in flight.
        await _engine.WaitForRangeAsync(offset, offset + 1).ConfigureAwait(false);
        await PausePointAsync().ConfigureAwait(false);
        if (IsCancelled)
        {
            return TimeSpan.Zero;
        }

        // While the copy yields to a guest, a run no longer than it may have in flight: the run's chunks stay
        // claimed until its last operation is issued.
        var claim = await _engine.ClaimRunAsync(offset, _targetCluster, YieldsToGuest ? GuestWritingMaxBytesInFlight : long.MaxValue).ConfigureAwait(false);
        try
        {
            return await IssueRunAsync(claim.Offset, claim.Offset + claim.Length).ConfigureAwait(false);
        }
        finally
        {
            _engine.EndClaim(claim);
        }
    }

    /// <summary>Issues the operations of a claimed run [offset, end), by block status.</summary>
    async Task<TimeSpan> IssueRunAsync(long offset, long end)
    {
        var delay = TimeSpan.Zero;
        while (offset < end)
        {
            var (method, io) = await ChooseMethodAsync(offset, end).ConfigureAwait(false);
            while (MustWaitToIssue(io))
            {
                await _engine.WaitForIoAsync().ConfigureAwait(false);
            }

            if (_engine.IoFailed)
            {
                // Give the chunks not yet issued back to the bitmap: the claim cleared them.
                _engine.ReleaseUnissued(offset, end);
                return TimeSpan.Zero;
            }

            var skipped = false;
            if (method == MirrorMethod.Copy)
            {
                await _engine.StartCopyAsync(offset, io).ConfigureAwait(false);
            }
            else
            {
                skipped = _engine.StartZeroOrDiscard(offset, io, method, initialZeroing: false);
            }

            // Zeroes the target already reads cost nothing, so they do not count against the speed limit.
            var accounted = method == MirrorMethod.Copy || (!_zeroesUnmetered && !skipped) ? io : 0;
            if (Speed != 0)
            {
                delay = Limiter.CalculateDelay(accounted);
            }

            offset += io;
        }

        _cursor = end;
        return delay;
    }

    /// <summary>Whether an operation of <paramref name="length"/> bytes must wait for one in flight to end first.</summary>
    bool MustWaitToIssue(long length)
    {
        var (bytesInFlight, inFlight, _) = _engine.Snapshot();
        return inFlight >= InFlightLimit || OverGuestShare(bytesInFlight, inFlight, length);
    }

    /// <summary>
    /// Whether <paramref name="adding"/> more bytes would take the copy past what it keeps in flight while it
    /// yields to a guest (never with nothing in flight: <see cref="MirrorEngine.WaitForIoAsync"/> would not wait).
    /// </summary>
    bool OverGuestShare(long bytesInFlight, int inFlight, long adding) =>
        inFlight > 0 && bytesInFlight + adding > GuestWritingMaxBytesInFlight && YieldsToGuest;

    /// <summary>Decides how to move [offset, ...) and how much of it in one operation.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<(MirrorMethod Method, long Length)> ChooseMethodAsync(long offset, long end)
    {
        BlockStatus status;
        try
        {
            // The whole chain, as QEMU's mirror_iteration asks: what the source reads is what is copied.
            // (Only the initial dirty bitmap of sync=top looks above the base.)
            status = await BlockChain.GetBlockStatusAboveAsync(_read.Node, null, offset, end - offset).ConfigureAwait(false);
        }
        catch (BlockIOException)
        {
            // Cannot tell: copy, which is always right (the read will report a real error).
            return (MirrorMethod.Copy, ChunkAligned(offset, Math.Min(end - offset, _maxIo)));
        }

        if (status.IsData)
        {
            return (MirrorMethod.Copy, ChunkAligned(offset, Math.Min(status.Length, _maxIo)));
        }

        // A zero run shorter than one chunk says nothing about the rest of the chunk (data may follow
        // within it): copy the chunk, never zero it.
        if (status.Length < _granularity && offset + status.Length < _length)
        {
            return (MirrorMethod.Copy, ChunkAligned(offset, _granularity));
        }

        var io = ChunkAligned(offset, status.Length);

        // Zeroing or discarding only part of a target cluster could make the target allocate it or read
        // stale data from its backing; copy the zeroes instead, as QEMU does.
        if (offset % _targetCluster != 0 || (io % _targetCluster != 0 && offset + io != _length))
        {
            return (MirrorMethod.Copy, Math.Min(io, _maxIo));
        }

        return (status.IsZero ? MirrorMethod.Zero : MirrorMethod.Discard, io);
    }

    /// <summary>Rounds a run down to whole chunks, but never below one chunk nor past the device end.</summary>
    long ChunkAligned(long offset, long length)
    {
        length -= length % _granularity;
        length = Math.Max(length, _granularity);
        return Math.Min(length, _length - offset);
    }

    // ----- Initial dirtying -----

    /// <summary>
    /// Marks what must be copied before the job can be in sync. A target that already reads as zeroes
    /// needs only the source's non-zero data. Otherwise, as QEMU: zero the whole target first where that
    /// is cheap, else copy everything (zero ranges then become write-zeroes, not data, and none where the
    /// target is known to read zeroes already: see <see cref="ScanTargetZeroesAsync"/>).
    /// </summary>
    async Task DirtyInitAsync()
    {
        var targetIsZero = await ScanTargetZeroesAsync().ConfigureAwait(false) && _base is null;
        if (_base is null && !targetIsZero)
        {
            if (!_target.Node.Capabilities.CanUnmapOnZero)
            {
                _dirty.SetAll();
                return;
            }

            await ZeroTargetAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            _engine.ThrowIfIoFailed();
            targetIsZero = true;
        }

        for (long offset = 0; offset < _length;)
        {
            await ThrottleAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return;
            }

            if (targetIsZero)
            {
                // Only what does not read as zeroes needs copying onto a zero target.
                var status = await BlockChain.GetBlockStatusAboveAsync(_read.Node, null, offset, _length - offset).ConfigureAwait(false);
                if (!status.IsZero)
                {
                    _dirty.SetDirty(offset, status.Length);
                }

                offset += status.Length;
            }
            else
            {
                var (allocated, length) = await BlockChain.IsAllocatedAboveAsync(_read.Node, _base, offset, _length - offset).ConfigureAwait(false);
                if (allocated)
                {
                    _dirty.SetDirty(offset, length);
                }

                offset += length;
            }
        }
    }

    async Task ZeroTargetAsync()
    {
        var step = Math.Max(_granularity, (1L << 30) / _granularity * _granularity);
        for (long offset = 0; offset < _length;)
        {
            await ThrottleAsync().ConfigureAwait(false);
            if (IsCancelled || _engine.IoFailed)
            {
                break;
            }

            if (_engine.InFlight >= MaxInFlight)
            {
                await _engine.WaitForIoAsync().ConfigureAwait(false);
                continue;
            }

            var length = Math.Min(step, _length - offset);
            _engine.StartZeroOrDiscard(offset, length, MirrorMethod.Zero, initialZeroing: true);
            offset += length;
        }

        await _engine.WaitForAllIoAsync().ConfigureAwait(false);
    }

    /// <summary>Yields once per slice during long setup work, so pauses and cancels are seen (QEMU's mirror_throttle).</summary>
    async ValueTask ThrottleAsync()
    {
        var now = Time.GetUtcNow();
        if (now - _lastPause > SliceTime)
        {
            _lastPause = now;
            await SleepAsync(TimeSpan.Zero).ConfigureAwait(false);
        }
        else
        {
            await PausePointAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// During the bulk copy, flushes the target once every <see cref="MirrorOptions.BulkFlushBytes"/> (256 MiB) copied, without
    /// waiting for it (the copy goes on beside it; one at a time). A target that caches writes (a page
    /// cache, an NBD server's file) otherwise holds everything copied until the flush before READY, and
    /// writes it all back then, while the job waits: measured over NBD, 2 GiB copied left a 1 to 2.5 s
    /// final flush, which flushes along the way cut to 0.06 s. A failure goes through the target's
    /// policy as any failed flush does. QEMU flushes only before READY.
    /// </summary>
    void StartBulkFlushIfDue()
    {
        if (_bulkFlush is { IsCompleted: false })
        {
            return;
        }

        var copied = Volatile.Read(ref _copiedBytes);
        if (copied - _copiedAtBulkFlush < _options.BulkFlushBytes)
        {
            return;
        }

        _copiedAtBulkFlush = copied;
        _bulkFlush = _engine.FlushTargetAsync();
    }

    /// <summary>Waits for a flush started by <see cref="StartBulkFlushIfDue"/> (its failure was handled where it failed).</summary>
    async Task WaitBulkFlushAsync()
    {
        if (_bulkFlush is { } flush)
        {
            _bulkFlush = null;
            await flush.ConfigureAwait(false);
        }
    }
}
