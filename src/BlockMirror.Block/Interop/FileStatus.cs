using System.Runtime.InteropServices;

namespace BlockMirror.Block.Interop;

/// <summary>
/// What statx(2) tells about a file by path (links followed): its identity (device and inode, so that two
/// paths through symbolic links, hard links or bind mounts can be seen to be one file) and the bytes it
/// occupies on disk. statx's layout is the same on every Linux architecture.
/// </summary>
public static partial class FileStatus
{
    const int AtFdCwd = -100;
    const int AtEmptyPath = 0x1000;
    const uint StatxType = 0x1;
    const uint StatxIno = 0x100;
    const uint StatxBlocks = 0x400;

    // struct statx: __u32 stx_mask at 0, __u16 stx_mode at 28, __u64 stx_blocks at 48, __u64 stx_ino at 32, __u32 stx_dev_major
    // at 136 and stx_dev_minor at 140; 256 bytes in all.
    const int StatxSize = 256;
    const int MaskOffset = 0;
    const int ModeOffset = 28;
    const int InoOffset = 32;
    const int BlocksOffset = 48;
    const int DevMajorOffset = 136;
    const int DevMinorOffset = 140;

    /// <summary>
    /// True or false when both files exist and can be examined; null when that cannot be told (a file is
    /// missing, or the C library has no statx), so the caller falls back to comparing paths.
    /// </summary>
    public static bool? AreSame(string a, string b) =>
        Identify(a) is { } first && Identify(b) is { } second ? first == second : null;

    /// <summary>The device and inode of a file, or null when it cannot be examined.</summary>
    public static (uint DevMajor, uint DevMinor, ulong Inode)? Identify(string path)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        return Query(path, StatxIno, buffer)
            ? (MemoryMarshal.Read<uint>(buffer[DevMajorOffset..]), MemoryMarshal.Read<uint>(buffer[DevMinorOffset..]), MemoryMarshal.Read<ulong>(buffer[InoOffset..]))
            : null;
    }

    /// <summary>
    /// The device (as <c>st_dev</c>, glibc's makedev encoding) and inode of an open file descriptor, or null when
    /// that cannot be told: what systemd's <c>JOURNAL_STREAM</c> names the journal's stream by.
    /// </summary>
    public static (ulong Device, ulong Inode)? IdentifyDescriptor(int fd)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        if (!Query(fd, "", AtEmptyPath, StatxIno, buffer))
        {
            return null;
        }

        ulong major = MemoryMarshal.Read<uint>(buffer[DevMajorOffset..]), minor = MemoryMarshal.Read<uint>(buffer[DevMinorOffset..]);
        var device = ((major & 0xfff) << 8) | ((major & 0xfffff000) << 32) | (minor & 0xff) | ((minor & 0xffffff00) << 12);
        return (device, MemoryMarshal.Read<ulong>(buffer[InoOffset..]));
    }

    /// <summary>What kind of file <paramref name="path"/> names (links followed), or null when it cannot be examined.</summary>
    public static UnixFileKind? KindOf(string path)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        return Query(path, StatxType, buffer) ? Kind(buffer) : null;
    }

    /// <summary>The type of the file open as <paramref name="handle"/>, or null when it cannot be told.</summary>
    public static UnixFileKind? KindOf(Microsoft.Win32.SafeHandles.SafeFileHandle handle)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        return Query((int)handle.DangerousGetHandle(), "", AtEmptyPath, StatxType, buffer) ? Kind(buffer) : null;
    }

    static UnixFileKind Kind(ReadOnlySpan<byte> statx) => (UnixFileKind)(MemoryMarshal.Read<ushort>(statx[ModeOffset..]) & 0xF000);

    /// <summary>
    /// The bytes the file occupies on disk (<c>st_blocks * 512</c>, what <c>qemu-img info</c> shows as "disk
    /// size"), or null when that cannot be told.
    /// </summary>
    public static long? AllocatedBytes(string path)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        return Query(path, StatxBlocks, buffer) ? (long)MemoryMarshal.Read<ulong>(buffer[BlocksOffset..]) * 512 : null;
    }

    /// <summary>statx for the fields in <paramref name="mask"/>; false when the call or those fields are not available.</summary>
    static bool Query(string path, uint mask, Span<byte> buffer) => Query(AtFdCwd, path, 0, mask, buffer);

    static bool Query(int dirFd, string path, int flags, uint mask, Span<byte> buffer)
    {
        try
        {
            if (Statx(dirFd, path, flags, mask, buffer) != 0)
            {
                return false;
            }
        }
        catch (Exception ex) when (ex is EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }

        return (MemoryMarshal.Read<uint>(buffer[MaskOffset..]) & mask) == mask;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirFd, string path, int flags, uint mask, Span<byte> buffer);
}

/// <summary>A file's type, as the S_IFMT bits of its mode give it.</summary>
public enum UnixFileKind
{
    Fifo = 0x1000,
    CharacterDevice = 0x2000,
    Directory = 0x4000,
    BlockDevice = 0x6000,
    Regular = 0x8000,
    SymbolicLink = 0xA000,
    Socket = 0xC000,
}
