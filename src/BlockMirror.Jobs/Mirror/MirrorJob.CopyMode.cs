namespace BlockMirror.Jobs.Mirror;

/// <summary>The copy mode: what was asked for, whether guest writes go to the target now, and actively-synced.</summary>
public sealed partial class MirrorJob
{
    // Written under the job lock (ChangeCopyMode) or by the adaptive policy; read on every guest write.
    volatile MirrorCopyMode _copyMode;
    volatile bool _writesBlocking;

    // QEMU's actively_synced: set by the loop once READY with nothing dirty and nothing in flight while
    // writes block; cleared by any copy error and by any guest write that did not reach the target.
    // Writers that clear it mark the bitmap first, and the loop sets it only before looking at the bitmap
    // once more, so the two never leave it true over a dirty chunk.
    volatile bool _activelySynced;

    // A forced cancel (or any cancel before READY): guest writes stop going to the target (QEMU's
    // should_copy_to_target looks at job_is_cancelled). A soft cancel in READY keeps them going.
    volatile bool _forcedCancel;

    /// <summary>The copy mode asked for, at the start or by <see cref="ChangeCopyMode"/>.</summary>
    public MirrorCopyMode CopyMode => _copyMode;

    /// <summary>
    /// Whether guest writes go to the target before they are acknowledged, now: true in write-blocking
    /// mode, and in adaptive mode while its policy says so.
    /// </summary>
    public bool WritesBlocking => _writesBlocking;

    /// <summary>
    /// QEMU's <c>actively-synced</c>: the job is READY, guest writes block, and nothing was dirty or in
    /// flight when the loop last looked, with no error or unmirrored write since. While it holds, every
    /// acknowledged write is on the target as well.
    /// </summary>
    /// <remarks>
    /// Reported false while a chunk is dirty and no guest write is in flight (a write in flight marks its
    /// chunks on the source before it clears them, so a mark then is not a lack on the target). The
    /// randomized harness found the loop's flag held over a dirty chunk in rare interleavings: a write that
    /// entered the filter before the job was attached and landed after the loop found nothing dirty did not
    /// end the flag (the filter now asks the job as it is when the write ends). The check stays as a second
    /// guard: what is reported must not claim a copy the target may lack.
    /// </remarks>
    public bool ActivelySynced => _activelySynced && _writesBlocking && (Filter.GuestWritesInFlight || _dirty.DirtyBytes == 0);

    /// <summary>
    /// block-job-change's copy-mode. QEMU 8.2 allows only background to write-blocking; we also allow the
    /// way back (guest writes then dirty the bitmap again, and actively-synced ends at once) and the
    /// adaptive mode (its policy decides from then on; until it does, writes do not block). Asking for the
    /// mode the job has changes nothing. Refused as QEMU refuses a verb in the job's state.
    /// </summary>
    public void ChangeCopyMode(MirrorCopyMode mode)
    {
        if (!Enum.IsDefined(mode))
        {
            throw new JobException($"Change to copy mode '{(int)mode}' is not implemented");
        }

        lock (Lock)
        {
            CheckVerb(JobVerb.Change);
            if (_copyMode == mode)
            {
                return;
            }

            _copyMode = mode;
            if (mode == MirrorCopyMode.Adaptive)
            {
                Interlocked.Increment(ref _adaptiveEntered);
            }

            // A job that is finishing keeps its writes blocking in adaptive mode, as its policy would at READY.
            SetWritesBlocking(mode == MirrorCopyMode.WriteBlocking || (mode == MirrorCopyMode.Adaptive && _finishing));
        }
    }

    /// <summary>
    /// For the adaptive policy: switches whether guest writes go to the target synchronously, without
    /// changing <see cref="CopyMode"/>. Takes effect for writes that start after the call; writes already
    /// in flight finish the way they started, and the engine keeps the two kinds from losing a chunk (see
    /// <see cref="MirrorTopFilter"/>). Leaving write-blocking ends actively-synced at once.
    /// </summary>
    internal void SetWritesBlocking(bool blocking)
    {
        _writesBlocking = blocking;
        if (!blocking)
        {
            _activelySynced = false;
        }
    }

    /// <summary>
    /// Once the job is to finish in READY (complete, or a soft cancel), guest writes go to the target too
    /// until the end, whatever the copy mode (<see cref="CopyMode"/> still reports what was asked).
    /// </summary>
    /// <remarks>
    /// Why: the switch needs a moment with nothing dirty and nothing in flight, then a drain that finds the
    /// bitmap still clean. Under a guest that writes without pause, background mode rarely gets both: the
    /// writes in flight when the drain starts land and dirty the bitmap, and the drain is let go to copy
    /// them. On the bench host a guest writing flat out kept <c>complete</c> waiting 2.9 to 16.8 s while each
    /// flush took under 3 ms (QEMU's mirror has the same loop, and its switches there took 0.9 to 62 s). With
    /// the writes mirrored, what is dirty stops growing: the loop copies the rest and the drain finds it
    /// clean. A guest write then waits for the target too, as in write-blocking mode, for that short time
    /// instead of being held for the whole switch. A later block-job-change to another mode is obeyed (to
    /// background: the writes stop blocking); one to adaptive keeps them blocking.
    /// </remarks>
    void BlockWritesToFinish()
    {
        lock (Lock)
        {
            _finishing = true;
            if (!_forcedCancel)
            {
                SetWritesBlocking(true);
            }
        }
    }

    // Set once complete or a soft cancel asked the job to finish: the adaptive policy leaves the writes
    // blocking from then on.
    volatile bool _finishing;

    /// <summary>Whether a guest write starting now should go to the target too (QEMU's should_copy_to_target).</summary>
    internal bool CopiesGuestWrites => _writesBlocking && !_forcedCancel && !_engine.IoFailed;

    internal MirrorEngine Engine => _engine;

    /// <summary>A guest write went to the source only: the target may lack it until the loop copies it.</summary>
    internal void WriteNotMirrored()
    {
        _activelySynced = false;
        Volatile.Write(ref _lastGuestWrite, Time.GetTimestamp());
        Volatile.Write(ref _guestHasWritten, true);
    }

    // When a guest write through the filter last ended (a timestamp of the job's clock), once there was one.
    long _lastGuestWrite;
    bool _guestHasWritten;

    /// <summary>Whether a guest write ended within the last slice: the background copy then yields the disk (<see cref="GuestWritingMaxBytesInFlight"/>).</summary>
    bool GuestWroteLately => Volatile.Read(ref _guestHasWritten) && Time.GetElapsedTime(Volatile.Read(ref _lastGuestWrite)) < SliceTime;

    /// <summary>A guest write's copy to the target: counted as work that came in and, when it landed, as done.</summary>
    internal void ActiveWriteStarted(long bytes) => ProgressIncreaseRemaining(bytes);

    /// <summary>The loop found nothing dirty and nothing in flight while READY.</summary>
    void MarkActivelySyncedIfClean()
    {
        if (!_writesBlocking)
        {
            return;
        }

        _activelySynced = true;
        if (_dirty.DirtyBytes != 0 || !_writesBlocking)
        {
            // A writer dirtied a chunk since the loop looked: it cleared the flag after marking, or will.
            // Or block-job-change left write-blocking between the check above and the set: its clear
            // came first and must not be undone.
            _activelySynced = false;
        }
    }
}
