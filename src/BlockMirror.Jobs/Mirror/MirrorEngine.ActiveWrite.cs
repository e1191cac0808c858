using System.Runtime.CompilerServices;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// Guest writes in write-blocking mode (QEMU's active_write_prepare, do_sync_target_write and
/// active_write_settle): the write owns its chunks while it goes to source and target, and then the
/// chunks it made equal on both are clean.
/// </summary>
sealed partial class MirrorEngine
{
    /// <summary>
    /// Waits until no operation holds a chunk of [offset, offset + length), then owns those chunks (QEMU's
    /// active_write_prepare). Unlike the loop, a guest write cannot copy less than it was given, so it waits
    /// for its whole range.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<MirrorOp> BeginActiveWriteAsync(long offset, long length)
    {
        var end = offset + length;
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (!RangeInFlightLocked(offset, end))
                {
                    var op = RentLocked(offset, length, MirrorMethod.Copy, MirrorOpKind.ActiveWrite);
                    var (first, count) = op.Chunks(_granularity);
                    _inFlightChunks!.Set(first, count);
                    _ops.Add(op);
                    return op;
                }

                wait = WaiterLocked(offset, end);
            }

            await wait.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A guest write that does not go to the target has started while write-blocking writes may be in
    /// flight: none of those may clear its chunks at its end, since the other write's bytes may land on
    /// the source after its own and its dirty mark before its clear.
    /// </summary>
    public void KeepActiveWritesDirty()
    {
        lock (_lock)
        {
            foreach (var op in _ops)
            {
                if (op.Kind == MirrorOpKind.ActiveWrite)
                {
                    op.KeepDirty = true;
                }
            }
        }
    }

    /// <summary>
    /// The part of a guest write [offset, offset + length) that goes to the target (QEMU's
    /// do_sync_target_write): an unaligned edge whose chunk is dirty is left out, since the chunk holds
    /// bytes still to copy and the loop will copy it whole; a clean edge goes, and its chunk stays clean.
    /// Where the target lacks, during the job, the backing it will read through afterwards (see
    /// <see cref="MirrorJob"/>'s GuestWriteAlignment), only whole target clusters go: a write into part of a
    /// cluster the target has not allocated would allocate it and fill the rest from nothing (zeroes), and
    /// once the backing is there the cluster would hide the data the backing holds for the rest.
    /// Empty (end &lt;= start) when nothing is left. Called once the write owns its chunks, so only the
    /// write itself changes them from here on.
    /// </summary>
    public (long Start, long End) TargetRange(long offset, long length)
    {
        var end = offset + length;
        var unit = _guestWriteAlignment;
        if (unit > 1)
        {
            // Only whole units go: the edges stay dirty (the source's own marking of this write) and the
            // loop copies them whole, from the source, which reads the rest of each cluster through its chain.
            offset = (offset + unit - 1) / unit * unit;
            if (end < _length)
            {
                end -= end % unit;
            }

            return (offset, end);
        }

        if (offset % _granularity != 0 && _dirty.IsDirty(offset))
        {
            offset += _granularity - offset % _granularity;
        }

        if (end % _granularity != 0 && end < _length && _dirty.IsDirty(end - 1))
        {
            end -= end % _granularity;
        }

        return (offset, end);
    }

    // 1, or the whole target clusters (and chunks) a guest write's target part is cut to (TargetRange).
    long _guestWriteAlignment = 1;

    /// <summary>
    /// Writes a guest write's part to the target. A failure marks the range dirty again and goes through
    /// the target's error policy (which ends actively-synced, and on <c>stop</c> pauses the job), but never
    /// reaches the guest: its write is on the source, and the loop will copy it. True when it landed.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> WriteTargetAsync(MirrorMethod method, long offset, ReadOnlyMemory<byte> data, long length, RequestFlags flags)
    {
        bool alreadyZero;
        lock (_lock)
        {
            _activeBytesInFlight += length;

            // The write owns every chunk it touches, so nothing else changes their bits meanwhile. Zeroes
            // over chunks the target already reads as zeroes need no request (QEMU 10.1 skips them too);
            // data makes the chunks it touches unknown before it is sent.
            alreadyZero = method == MirrorMethod.Zero && _zeroChunks!.IsZero(offset, length);
            if (method != MirrorMethod.Zero)
            {
                _zeroChunks!.Forget(offset, length);
            }
        }

        _job.ActiveWriteStarted(length);
        var landed = false;
        try
        {
            // The guest's fast-zero request concerns the source; the target must just get the zeroes.
            flags &= ~RequestFlags.NoFallback;
            if (alreadyZero)
            {
                // Nothing to send: the target reads zeroes there already.
            }
            else if (method == MirrorMethod.Zero)
            {
                await _target.WriteZeroesAsync(offset, length, flags, _forceCancel.Token).ConfigureAwait(false);
                lock (_lock)
                {
                    // Only the chunks it filled whole: the rest of a chunk it touched is still unknown.
                    _zeroChunks!.MarkZero(offset, length);
                }
            }
            else
            {
                await _target.WriteAsync(offset, data, flags, _forceCancel.Token).ConfigureAwait(false);
            }

            landed = true;
        }
        catch (BlockIOException ex)
        {
            Failed(offset, length, isRead: false, ex);
        }
        catch (OperationCanceledException)
        {
            // A forced cancel: the job is ending; the range stays dirty.
            _dirty.SetDirty(offset, length);
        }
        catch (Exception ex)
        {
            // Not an I/O error: a bug. Fail the job, keep the range dirty, and still spare the guest.
            _dirty.SetDirty(offset, length);
            RecordFailure(ex);
        }
        finally
        {
            lock (_lock)
            {
                _activeBytesInFlight -= length;
            }
        }

        if (landed)
        {
            _job.Copied(length, skipped: alreadyZero);
        }

        return landed;
    }

    /// <summary>
    /// Ends a guest write (QEMU's active_write_settle). When source and target both took it, the chunks
    /// made equal are clean: those [targetStart, targetEnd) covers, grown to whole chunks (its edges were
    /// clean, or were left out). A failed source write leaves its range dirty: the target may hold bytes
    /// the source does not. Then the chunks are free, and whoever waited on them looks again. Returns
    /// whether the write left a chunk of its range dirty (the target may lack part of it until the loop
    /// copies it): the caller must then end actively-synced, after this marking, as every writer that
    /// leaves a chunk dirty does.
    /// </summary>
    public bool EndActiveWrite(MirrorOp op, bool sourceWritten, long targetStart, long targetEnd, bool targetWritten)
    {
        var leftDirty = !sourceWritten || !targetWritten || op.KeepDirty || targetStart != op.Offset || targetEnd != op.Offset + op.Length;
        if (!sourceWritten)
        {
            _dirty.SetDirty(op.Offset, op.Length);
        }

        TaskCompletionSource? waiters;
        TaskCompletionSource? anyWaiter;
        lock (_lock)
        {
            if (sourceWritten && targetWritten && targetEnd > targetStart && !op.KeepDirty)
            {
                // The source's own marking of this write is done (its request has completed), so the
                // clear comes after it; a dirty edge was left out above, so its chunk is not covered.
                var start = targetStart - targetStart % _granularity;
                var end = Math.Min((targetEnd + _granularity - 1) / _granularity * _granularity, _length);
                _dirty.ResetDirty(start, end - start);
            }

            ReleaseLocked(op, out waiters, out anyWaiter);
            _opPool.Push(op);
        }

        waiters?.TrySetResult();
        anyWaiter?.TrySetResult();
        return leftDirty;
    }
}
