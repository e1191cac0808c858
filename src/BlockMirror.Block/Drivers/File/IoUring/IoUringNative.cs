using System.Runtime.InteropServices;

namespace BlockMirror.Block.Drivers.File.IoUring;

/// <summary>
/// The io_uring system calls and the structures they share with the kernel (include/uapi/linux/io_uring.h),
/// called through syscall(2): glibc has no wrappers and the project takes no liburing dependency.
/// </summary>
static unsafe partial class IoUringNative
{
    // System call numbers are the same on x86-64 and arm64 (the generic table).
    const long SYS_io_uring_setup = 425;
    const long SYS_io_uring_enter = 426;

    public const byte IORING_OP_READV = 1;
    public const byte IORING_OP_WRITEV = 2;
    public const byte IORING_OP_FSYNC = 3;
    public const byte IORING_OP_FALLOCATE = 17;
    public const byte IORING_OP_READ = 22;
    public const byte IORING_OP_WRITE = 23;

    public const uint IORING_FSYNC_DATASYNC = 1;

    /// <summary>Keep submitting after an entry fails its preparation (its error comes back as its completion).</summary>
    public const uint IORING_SETUP_SUBMIT_ALL = 1 << 7;

    /// <summary>Completion work waits for the task to enter the kernel instead of interrupting it.</summary>
    public const uint IORING_SETUP_COOP_TASKRUN = 1 << 8;

    /// <summary>Only one task (the one that set the ring up) ever submits.</summary>
    public const uint IORING_SETUP_SINGLE_ISSUER = 1 << 12;

    /// <summary>Completion work runs when the issuer waits for completions, on its own thread.</summary>
    public const uint IORING_SETUP_DEFER_TASKRUN = 1 << 13;

    public const uint IORING_ENTER_GETEVENTS = 1;

    /// <summary>The SQ and CQ rings share one mapping.</summary>
    public const uint IORING_FEAT_SINGLE_MMAP = 1;

    /// <summary>The kernel keeps completions that do not fit in the CQ instead of dropping them.</summary>
    public const uint IORING_FEAT_NODROP = 1 << 1;

    public const long IORING_OFF_SQ_RING = 0;
    public const long IORING_OFF_CQ_RING = 0x8000000;
    public const long IORING_OFF_SQES = 0x10000000;

    const int PROT_READ = 1;
    const int PROT_WRITE = 2;
    const int MAP_SHARED = 1;
    const int MAP_POPULATE = 0x8000;

    /// <summary>struct io_sqring_offsets: where the SQ ring's fields sit in its mapping.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct SqRingOffsets
    {
        public uint Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1;
        public ulong UserAddr;
    }

    /// <summary>struct io_cqring_offsets: where the CQ ring's fields sit in its mapping.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct CqRingOffsets
    {
        public uint Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1;
        public ulong UserAddr;
    }

    /// <summary>struct io_uring_params (120 bytes): flags in, sizes, features and offsets out.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Params
    {
        public uint SqEntries, CqEntries, Flags, SqThreadCpu, SqThreadIdle, Features, WqFd, Resv0, Resv1, Resv2;
        public SqRingOffsets SqOff;
        public CqRingOffsets CqOff;
    }

    /// <summary>
    /// struct io_uring_sqe (64 bytes), the fields the file operations use:
    /// <code>
    ///  0 opcode  1 flags  2 ioprio  4 fd  8 off  16 addr  24 len  28 op flags (rw, fsync)  32 user_data
    /// 40 buf_index  42 personality  44 splice_fd_in  48 addr3  56 pad
    /// </code>
    /// fallocate puts its length in addr and its mode in len.
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    public struct Sqe
    {
        [FieldOffset(0)] public byte Opcode;
        [FieldOffset(1)] public byte Flags;
        [FieldOffset(2)] public ushort IoPrio;
        [FieldOffset(4)] public int Fd;
        [FieldOffset(8)] public ulong Offset;
        [FieldOffset(16)] public ulong Address;
        [FieldOffset(24)] public uint Length;
        [FieldOffset(28)] public uint OpFlags;
        [FieldOffset(32)] public ulong UserData;
        [FieldOffset(40)] public ulong Tail0;
        [FieldOffset(48)] public ulong Tail1;
        [FieldOffset(56)] public ulong Tail2;
    }

    /// <summary>struct io_uring_cqe (16 bytes): the request's user_data, its result (or minus an errno), flags.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Cqe
    {
        public ulong UserData;
        public int Result;
        public uint Flags;
    }

    /// <summary>struct iovec.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public nint Base;
        public nuint Length;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall2(long number, uint entries, Params* parameters);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall6(long number, int fd, uint toSubmit, uint minComplete, uint flags, nint sig, nint sigSize);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint MMap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int MUnmap(nint address, nuint length);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    public const int EFD_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint Write(int fd, ulong* value, nuint length);

    /// <summary>Adds one to an eventfd's counter (wakes a pending read of it).</summary>
    public static void Signal(int eventFd)
    {
        ulong one = 1;
        Write(eventFd, &one, sizeof(ulong));
    }

    /// <summary>io_uring_setup(2): the ring's descriptor, or minus the errno.</summary>
    public static int Setup(uint entries, ref Params parameters)
    {
        fixed (Params* p = &parameters)
        {
            var fd = Syscall2(SYS_io_uring_setup, entries, p);
            return fd < 0 ? -Marshal.GetLastPInvokeError() : (int)fd;
        }
    }

    /// <summary>io_uring_enter(2): how many entries were submitted, or minus the errno.</summary>
    public static int Enter(int fd, uint toSubmit, uint minComplete, uint flags)
    {
        var result = Syscall6(SYS_io_uring_enter, fd, toSubmit, minComplete, flags, 0, 0);
        return result < 0 ? -Marshal.GetLastPInvokeError() : (int)result;
    }

    /// <summary>Maps a part of the ring (one of the IORING_OFF_* offsets): the address, or 0 with the errno in <paramref name="errno"/>.</summary>
    public static nint Map(int fd, nuint length, long offset, out int errno)
    {
        var address = MMap(0, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset);
        errno = address == -1 ? Marshal.GetLastPInvokeError() : 0;
        return address == -1 ? 0 : address;
    }
}
