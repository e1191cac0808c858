using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>The background operations: issued by the job's loop, each run on its own, ended by <see cref="OperationDone"/>.</summary>
sealed partial class MirrorEngine
{
    /// <summary>Issues a copy of [offset, offset + length), once the buffer has room for it.</summary>
    public async Task StartCopyAsync(long offset, long length)
    {
        var chunks = (int)((length + _granularity - 1) / _granularity);
        MirrorOp op;
        while (true)
        {
            lock (_lock)
            {
                if (_buffers!.FreeChunks >= chunks)
                {
                    op = StartLocked(offset, length, MirrorMethod.Copy, initialZeroing: false);
                    _buffers.Take(length, op.ReadSegments);
                    op.FillWriteSegments();
                    break;
                }
            }

            await WaitForIoAsync().ConfigureAwait(false);
        }

        _ = RunOpAsync(op);
    }

    /// <summary>Issues a write-zeroes or discard; <paramref name="initialZeroing"/> marks the zeroing before the copy (no chunks held, no progress).</summary>
    public void StartZeroOrDiscard(long offset, long length, MirrorMethod method, bool initialZeroing)
    {
        MirrorOp op;
        lock (_lock)
        {
            op = StartLocked(offset, length, method, initialZeroing);
        }

        _ = RunOpAsync(op);
    }

    /// <summary>
    /// Takes an in-flight slot for a background operation. Its chunks were set by the loop's claim; the
    /// operation is listed so that requests meeting them wait on it.
    /// </summary>
    MirrorOp StartLocked(long offset, long length, MirrorMethod method, bool initialZeroing)
    {
        var op = RentLocked(offset, length, method, MirrorOpKind.Background);
        op.InitialZeroing = initialZeroing;
        _inFlight++;
        _bytesInFlight += length;
        if (!initialZeroing)
        {
            _ops.Add(op);
        }

        return op;
    }

    async Task RunOpAsync(MirrorOp op)
    {
        var succeeded = false;
        try
        {
            var cancel = _forceCancel.Token;
            switch (op.Method)
            {
                case MirrorMethod.Copy:
                    try
                    {
                        await _read.ReadVectorAsync(op.Offset, op.ReadSegments, cancel).ConfigureAwait(false);
                    }
                    catch (BlockIOException ex)
                    {
                        Failed(op.Offset, op.Length, isRead: true, ex);
                        return;
                    }

                    await _target.WriteVectorAsync(op.Offset, op.WriteSegments, RequestFlags.None, cancel).ConfigureAwait(false);
                    break;
                case MirrorMethod.Zero:
                    await _target.WriteZeroesAsync(op.Offset, op.Length, _unmap ? RequestFlags.MayUnmap : RequestFlags.None, cancel).ConfigureAwait(false);
                    break;
                case MirrorMethod.Discard:
                    await _target.DiscardAsync(op.Offset, op.Length, cancel).ConfigureAwait(false);
                    break;
            }

            succeeded = true;
        }
        catch (BlockIOException ex)
        {
            Failed(op.Offset, op.Length, isRead: false, ex);
        }
        catch (OperationCanceledException)
        {
            // A forced cancel aborted it; the job is ending and the range no longer matters.
        }
        catch (Exception ex)
        {
            // Not an I/O error: a bug. Fail the job rather than lose the range silently.
            _dirty.SetDirty(op.Offset, op.Length);
            RecordFailure(ex);
        }
        finally
        {
            OperationDone(op, succeeded);
        }
    }

    void OperationDone(MirrorOp op, bool succeeded)
    {
        TaskCompletionSource? waiters = null;
        TaskCompletionSource? anyWaiter;
        var progress = succeeded && !op.InitialZeroing ? op.Length : 0;
        lock (_lock)
        {
            _inFlight--;
            _bytesInFlight -= op.Length;
            if (op.ReadSegments.Count > 0)
            {
                _buffers?.Return(op.ReadSegments);
                op.WriteSegments.Clear();
            }

            if (op.InitialZeroing)
            {
                anyWaiter = _ioWaiter;
                _ioWaiter = null;
            }
            else
            {
                if (succeeded)
                {
                    var (first, count) = op.Chunks(_granularity);
                    _cowChunks?.Set(first, count);
                }

                ReleaseLocked(op, out waiters, out anyWaiter);
            }

            _opPool.Push(op);
        }

        if (progress != 0)
        {
            _job.Copied(progress);
        }

        waiters?.TrySetResult();
        anyWaiter?.TrySetResult();
    }
}
