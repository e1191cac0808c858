using System.Runtime.CompilerServices;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The filter a mirror inserts above its source (QEMU's mirror_top). Every parent of the source sends
/// through it while the job runs, which is what lets the pivot move them all at once. (The job keeps
/// the source's and the target's lengths fixed with resize blockers on both nodes.) While guest writes
/// block (write-blocking mode), it sends each write and write-zeroes to source and target at once.
/// </summary>
/// <remarks>
/// <para><b>A write-blocking write</b> copies the guest's data into a pooled bounce buffer (the caller's
/// buffer could change while both writes read it, and source and target must get the same bytes). The
/// buffer is aligned for O_DIRECT, so neither file below copies it again into a bounce of its own, and it
/// comes from the filter's own bounded pool, not the process-wide array pool, which keeps a buffer of each
/// size per thread and so holds memory no job accounts for. It owns its
/// chunks in the engine (waiting for copies or writes in flight there), writes source and target side by
/// side, and at its end clears the chunks it made equal on both. A target failure never reaches the
/// guest: the range stays dirty and the job's on-target-error policy decides. A source failure reaches
/// the guest, and the range stays dirty (the target may have taken bytes the source did not). QEMU writes
/// the source first and the target after it; side by side, the guest waits for the slower of the two.</para>
/// <para><b>Other writes</b> (background mode, a discard, or a job that has failed or been forced to
/// cancel) go to the source only; the source marks the job's dirty bitmap when they complete. A
/// write-blocking write clears its chunks after its source write has marked them, so a write of the other
/// kind that overlaps it in time could have its mark cleared; the two counters below see to it that every
/// such pair is noticed by one side or the other, and the write-blocking one then leaves its chunks dirty.
/// That happens only around a switch of mode.</para>
/// <para><b>Discards</b> go to the source only, and leave their range dirty, also in write-blocking mode
/// (QEMU discards the target too): a discard leaves what the source reads unspecified (a node that
/// ignores discards keeps the old bytes, a qcow2 with a backing file shows the backing), so only a copy of
/// what the source reads afterwards keeps the target equal to it.</para>
/// </remarks>
sealed class MirrorTopFilter(NodeEdge source) : FilterDriver(source)
{
    public const string Name = "mirror_top";

    // Set once the job's engine is ready (after its initial dirtying, as QEMU's mirror_top_opaque->job),
    // cleared when the loop ends. Writes read it once at their start.
    MirrorJob? _job;

    // The engine of the job, kept after the job detaches: a write that started without the job may still
    // have to mark write-blocking writes in flight.
    MirrorEngine? _engine;

    // Write-blocking writes and other data-changing writes in flight. Each side raises its own counter
    // (a full fence) before it reads the other's, so of two that overlap, one sees the other.
    int _activeWrites;
    int _passiveWrites;

    // Bounce buffers of write-blocking writes, kept between writes.
    readonly AlignedBufferPool _bounces = new(AlignedMemory.DirectAlignment);

    public override string DriverName => Name;

    /// <summary>The job's write-intent log, from the filter's insertion on: every data-changing request waits for its region's mark.</summary>
    /// <remarks>Set inside the start's drained section, so no request reads it while it changes.</remarks>
    internal WriteIntentLog? Log { get; set; }

    /// <summary>The edge to the source: the job reads through it, untouched by drained sections.</summary>
    public NodeEdge Source => Child;

    /// <summary>Whether a guest write or write-zeroes (of either kind) is in flight through the filter.</summary>
    internal bool GuestWritesInFlight => Volatile.Read(ref _activeWrites) + Volatile.Read(ref _passiveWrites) > 0;

    /// <summary>The job's engine is ready: writes may go to the target from now on (when the mode says so).</summary>
    internal void Attach(MirrorJob job)
    {
        Volatile.Write(ref _engine, job.Engine);
        Volatile.Write(ref _job, job);
    }

    /// <summary>The job's loop has ended: writes go to the source only.</summary>
    internal void Detach() => Volatile.Write(ref _job, null);

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        var job = Volatile.Read(ref _job);
        if (job is not null && job.CopiesGuestWrites && buffer.Length > 0)
        {
            var bounce = _bounces.Rent(buffer.Length);
            buffer.CopyTo(bounce.Memory);
            return ActiveWriteAsync(job, MirrorMethod.Copy, offset, buffer.Length, bounce, flags, cancellationToken);
        }

        return PassiveAsync(job, PassiveOp.Write, offset, buffer, null, 0, flags, cancellationToken);
    }

    public override ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        var job = Volatile.Read(ref _job);
        var length = IoVectors.TotalLength(buffers);
        if (job is not null && job.CopiesGuestWrites && length > 0)
        {
            var bounce = _bounces.Rent(checked((int)length));
            var at = 0;
            foreach (var segment in buffers)
            {
                segment.Span.CopyTo(bounce.Memory.Span[at..]);
                at += segment.Length;
            }

            return ActiveWriteAsync(job, MirrorMethod.Copy, offset, length, bounce, flags, cancellationToken);
        }

        return PassiveAsync(job, PassiveOp.WriteVector, offset, default, buffers, length, flags, cancellationToken);
    }

    public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        var job = Volatile.Read(ref _job);
        if (job is not null && job.CopiesGuestWrites && length > 0)
        {
            return ActiveWriteAsync(job, MirrorMethod.Zero, offset, length, null, flags, cancellationToken);
        }

        return PassiveAsync(job, PassiveOp.Zero, offset, default, null, length, flags, cancellationToken);
    }

    public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken) =>
        PassiveAsync(Volatile.Read(ref _job), PassiveOp.Discard, offset, default, null, length, RequestFlags.None, cancellationToken);

    /// <summary>
    /// While writes block, a guest flush also flushes the target, side by side with the source; the guest
    /// sees the source's result, and a target failure goes through the job's policy as a failed write does.
    /// QEMU flushes the source only, so its target first becomes durable at the switch-over, in the flush
    /// made while the guest is held (measured: 340 ms under a writer). Here every acknowledged write is
    /// already on the target, and a guest flush is the guest's own "make it durable": passing it on keeps
    /// the target's unflushed data small, so the switch-over's flush has little left to write.
    /// </summary>
    public override ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        var job = Volatile.Read(ref _job);
        if (job is not null && job.CopiesGuestWrites)
        {
            return FlushBothAsync(job, cancellationToken);
        }

        return Child.FlushAsync(cancellationToken);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask FlushBothAsync(MirrorJob job, CancellationToken cancellationToken)
    {
        // Started before the source flush is awaited, so both run at once. A target failure was handled
        // (policy, error event) inside; the result only says whether it landed.
        var target = job.Engine.FlushTargetAsync();
        try
        {
            await Child.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            await target.ConfigureAwait(false);
        }
    }

    enum PassiveOp
    {
        Write,
        WriteVector,
        Zero,
        Discard,
    }

    /// <summary>A data-changing request that goes to the source only; the source marks the dirty bitmap.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask PassiveAsync(MirrorJob? job, PassiveOp op, long offset, ReadOnlyMemory<byte> buffer, IReadOnlyList<ReadOnlyMemory<byte>>? buffers,
        long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        // Marked (and the mark durable) before the source sees the request: a crash after this point finds it in the log.
        var bytes = op == PassiveOp.Write ? buffer.Length : length;
        if (Log is { } log)
        {
            await log.BeginWriteAsync(offset, bytes).ConfigureAwait(false);
        }

        Interlocked.Increment(ref _passiveWrites);
        if (Volatile.Read(ref _activeWrites) > 0)
        {
            Volatile.Read(ref _engine)?.KeepActiveWritesDirty();
        }

        try
        {
            switch (op)
            {
                case PassiveOp.Write:
                    await Child.WriteAsync(offset, buffer, flags, cancellationToken).ConfigureAwait(false);
                    break;
                case PassiveOp.WriteVector:
                    await Child.WriteVectorAsync(offset, buffers!, flags, cancellationToken).ConfigureAwait(false);
                    break;
                case PassiveOp.Zero:
                    await Child.WriteZeroesAsync(offset, length, flags, cancellationToken).ConfigureAwait(false);
                    break;
                case PassiveOp.Discard:
                    await Child.DiscardAsync(offset, length, cancellationToken).ConfigureAwait(false);
                    break;
            }
        }
        finally
        {
            Log?.EndWrite(offset, bytes);
            Interlocked.Decrement(ref _passiveWrites);

            // After the source's mark (QEMU's bdrv_mirror_top_do_write when it does not copy). The job as it
            // is now, not as it was when the write started: a write that started before the job was attached
            // and lands after its loop found nothing dirty must end actively-synced too, or the flag claims a
            // copy the target lacks until the loop copies the chunks this write marked (the randomized
            // harness: seed 269 of the active-mode runs, a write from the job's start landing after READY).
            (Volatile.Read(ref _job) ?? job)?.WriteNotMirrored();
        }
    }

    /// <summary>A write-blocking write or write-zeroes: see the remarks on the class.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask ActiveWriteAsync(MirrorJob job, MirrorMethod method, long offset, long length, AlignedMemory? bounce, RequestFlags flags,
        CancellationToken cancellationToken)
    {
        var engine = job.Engine;
        if (Log is { } log)
        {
            await log.BeginWriteAsync(offset, length).ConfigureAwait(false);
        }

        Interlocked.Increment(ref _activeWrites);
        try
        {
            var op = await engine.BeginActiveWriteAsync(offset, length).ConfigureAwait(false);
            if (Volatile.Read(ref _passiveWrites) > 0)
            {
                op.KeepDirty = true;
            }

            var (targetStart, targetEnd) = engine.TargetRange(offset, length);
            var data = bounce is null ? default : bounce.Memory[..(int)length];

            // Source and target side by side; the target part is null when both edges were dirty and nothing is left.
            var target = targetEnd > targetStart
                ? engine.WriteTargetAsync(method, targetStart, data.IsEmpty ? default : data[(int)(targetStart - offset)..(int)(targetEnd - offset)], targetEnd - targetStart, flags)
                : new ValueTask<bool>(false);
            Exception? sourceFailure = null;
            try
            {
                if (method == MirrorMethod.Zero)
                {
                    await Child.WriteZeroesAsync(offset, length, flags, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await Child.WriteAsync(offset, data, flags, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (Exception ex)
            {
                sourceFailure = ex;
            }

            var targetWritten = await target.ConfigureAwait(false);
            if (engine.EndActiveWrite(op, sourceFailure is null, targetStart, targetEnd, targetWritten))
            {
                // Part of the range stays dirty (a dirty edge left to the loop, a write of the other kind
                // overlapping it, a failure): the loop may have declared the job in sync while this write
                // was in flight, and must look again.
                job.WriteNotMirrored();
            }

            if (sourceFailure is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(sourceFailure);
            }
        }
        finally
        {
            Log?.EndWrite(offset, length);
            Interlocked.Decrement(ref _activeWrites);
            if (bounce is not null)
            {
                _bounces.Return(bounce);
            }
        }
    }
}
