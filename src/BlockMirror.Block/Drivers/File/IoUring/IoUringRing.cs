using static BlockMirror.Block.Drivers.File.IoUring.IoUringNative;

namespace BlockMirror.Block.Drivers.File.IoUring;

/// <summary>
/// One io_uring instance: the descriptor and the three shared mappings (SQ ring, CQ ring, SQE array).
/// </summary>
/// <remarks>
/// <para>Layout, as io_uring_setup describes it in the offsets it returns:</para>
/// <code>
/// SQ ring: head (kernel moves) | tail (we move) | mask | entries | flags | dropped | array[entries] of SQE indexes
/// CQ ring: head (we move) | tail (kernel moves) | mask | entries | overflow | cqes[cq entries] of 16 bytes
/// SQEs:    entries x 64 bytes
/// </code>
/// <para>Each side owns one index of each ring and only reads the other's: we publish an SQE by filling it
/// and then storing the SQ tail with release semantics (the kernel must not see the tail before the
/// entry), and read the CQ tail with acquire semantics before reading the entries it covers; storing
/// the CQ head (release) hands the slots back. The SQ array is filled once as the identity (slot i
/// holds SQE i), so only the tail moves.</para>
/// <para>Not thread-safe: only <see cref="FileIoUring"/>'s completion thread, which sets the ring up, uses it.</para>
/// </remarks>
sealed unsafe class IoUringRing : IDisposable
{
    readonly int _fd;
    readonly nint _sqRing;
    readonly nuint _sqRingSize;
    // 0 when the CQ ring shares the SQ ring's mapping (IORING_FEAT_SINGLE_MMAP).
    readonly nint _cqMapping;
    readonly nuint _cqRingSize;
    readonly nint _sqes;
    readonly nuint _sqesSize;

    readonly uint* _sqHead;
    readonly uint* _sqTail;
    readonly uint _sqMask;
    readonly uint* _cqHead;
    readonly uint* _cqTail;
    readonly uint _cqMask;
    readonly Cqe* _cqes;
    uint _sqTailLocal;
    uint _cqHeadLocal;

    IoUringRing(int fd, in Params p, nint sqRing, nuint sqRingSize, nint cqRing, bool cqMapped, nuint cqRingSize, nint sqes, nuint sqesSize)
    {
        _fd = fd;
        _sqRing = sqRing;
        _sqRingSize = sqRingSize;
        _cqMapping = cqMapped ? cqRing : 0;
        _cqRingSize = cqRingSize;
        _sqes = sqes;
        _sqesSize = sqesSize;
        Entries = p.SqEntries;
        CqEntries = p.CqEntries;
        _sqHead = (uint*)(sqRing + (nint)p.SqOff.Head);
        _sqTail = (uint*)(sqRing + (nint)p.SqOff.Tail);
        _sqMask = *(uint*)(sqRing + (nint)p.SqOff.RingMask);
        _cqHead = (uint*)(cqRing + (nint)p.CqOff.Head);
        _cqTail = (uint*)(cqRing + (nint)p.CqOff.Tail);
        _cqMask = *(uint*)(cqRing + (nint)p.CqOff.RingMask);
        _cqes = (Cqe*)(cqRing + (nint)p.CqOff.Cqes);
        _sqTailLocal = *_sqTail;
        _cqHeadLocal = *_cqHead;

        var array = (uint*)(sqRing + (nint)p.SqOff.Array);
        for (uint i = 0; i < Entries; i++)
        {
            array[i] = i;
        }
    }

    /// <summary>SQ entries (a power of two).</summary>
    public uint Entries { get; }

    /// <summary>CQ entries (twice the SQ's unless asked otherwise).</summary>
    public uint CqEntries { get; }

    public int Fd => _fd;

    /// <summary>
    /// Sets up a ring of <paramref name="entries"/> entries; null with the reason when the kernel refuses
    /// (ENOSYS: no io_uring; EPERM: disabled by kernel.io_uring_disabled or a seccomp policy; ENOMEM: locked memory).
    /// </summary>
    public static IoUringRing? TryCreate(uint entries, out string? failure)
    {
        // The caller's thread is the ring's only submitter (FileIoUring's completion thread), so completion
        // work can wait until it asks for completions (6.1); older kernels refuse the flags with EINVAL and
        // get fewer of them: without SUBMIT_ALL (before 5.18) a failed entry stops the batch, and the rest
        // is submitted again.
        uint[] tries =
        [
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
            0,
        ];
        var p = default(Params);
        var fd = -Interop.LibC.EINVAL;
        foreach (var flags in tries)
        {
            p = new Params { Flags = flags };
            fd = IoUringNative.Setup(entries, ref p);
            if (fd != -Interop.LibC.EINVAL)
            {
                break;
            }
        }

        if (fd < 0)
        {
            failure = $"io_uring_setup failed: {Interop.LibC.Describe(-fd)}";
            return null;
        }

        if ((p.Features & IORING_FEAT_NODROP) == 0)
        {
            // Without it a full CQ loses completions; our in-flight bound keeps it from filling, but a
            // kernel this old (before 5.5) lacks IORING_OP_READ/WRITE/FALLOCATE too.
            Close(fd);
            failure = "the kernel's io_uring is too old (no IORING_FEAT_NODROP, before Linux 5.5)";
            return null;
        }

        var sqRingSize = (nuint)(p.SqOff.Array + p.SqEntries * sizeof(uint));
        var cqRingSize = (nuint)(p.CqOff.Cqes + p.CqEntries * (uint)sizeof(Cqe));
        var single = (p.Features & IORING_FEAT_SINGLE_MMAP) != 0;
        if (single)
        {
            sqRingSize = cqRingSize = Math.Max(sqRingSize, cqRingSize);
        }

        nint sqRing = 0, cqRing = 0, sqes = 0;
        var sqesSize = (nuint)(p.SqEntries * (uint)sizeof(Sqe));
        sqRing = Map(fd, sqRingSize, IORING_OFF_SQ_RING, out var errno);
        if (sqRing != 0)
        {
            cqRing = single ? sqRing : Map(fd, cqRingSize, IORING_OFF_CQ_RING, out errno);
        }

        if (cqRing != 0)
        {
            sqes = Map(fd, sqesSize, IORING_OFF_SQES, out errno);
        }

        if (sqes == 0)
        {
            if (cqRing != 0 && !single)
            {
                MUnmap(cqRing, cqRingSize);
            }

            if (sqRing != 0)
            {
                MUnmap(sqRing, sqRingSize);
            }

            Close(fd);
            failure = $"mapping the io_uring rings failed: {Interop.LibC.Describe(errno)}";
            return null;
        }

        failure = null;
        return new IoUringRing(fd, p, sqRing, sqRingSize, cqRing, !single, cqRingSize, sqes, sqesSize);
    }

    /// <summary>
    /// The next free SQE, cleared, for the caller to fill and then <see cref="Publish"/>; the caller keeps
    /// the number of entries in flight at or below <see cref="Entries"/>, so one is always free.
    /// </summary>
    public Sqe* NextSqe()
    {
        var head = Volatile.Read(ref *_sqHead);
        System.Diagnostics.Debug.Assert(_sqTailLocal - head < Entries, "SQ full: the in-flight bound was broken");
        var sqe = (Sqe*)_sqes + (_sqTailLocal & _sqMask);
        *sqe = default;
        return sqe;
    }

    /// <summary>Makes the SQE from <see cref="NextSqe"/> visible to the kernel (release: after its contents).</summary>
    public void Publish()
    {
        _sqTailLocal++;
        Volatile.Write(ref *_sqTail, _sqTailLocal);
    }

    /// <summary>The next completion, if the kernel has posted one (acquire: its contents after the tail).</summary>
    public bool TryPeek(out Cqe cqe)
    {
        var tail = Volatile.Read(ref *_cqTail);
        if (_cqHeadLocal == tail)
        {
            cqe = default;
            return false;
        }

        cqe = _cqes[_cqHeadLocal & _cqMask];
        return true;
    }

    /// <summary>Hands the slot read by <see cref="TryPeek"/> back to the kernel (release: after reading it).</summary>
    public void Advance()
    {
        _cqHeadLocal++;
        Volatile.Write(ref *_cqHead, _cqHeadLocal);
    }

    /// <summary>io_uring_enter: submit <paramref name="toSubmit"/> entries and, with <paramref name="wait"/>, sleep until one completes.</summary>
    public int Enter(uint toSubmit, bool wait) =>
        IoUringNative.Enter(_fd, toSubmit, wait ? 1u : 0u, wait ? IORING_ENTER_GETEVENTS : 0);

    public void Dispose()
    {
        MUnmap(_sqes, _sqesSize);
        if (_cqMapping != 0)
        {
            MUnmap(_cqMapping, _cqRingSize);
        }

        MUnmap(_sqRing, _sqRingSize);
        Close(_fd);
    }
}
