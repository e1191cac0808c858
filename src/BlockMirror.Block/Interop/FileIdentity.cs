using System.Runtime.InteropServices;

namespace BlockMirror.Block.Interop;

/// <summary>
/// Whether two paths name the same file through symbolic links, hard links or bind mounts: the same
/// device and inode, read with statx(2), whose layout is the same on every Linux architecture.
/// </summary>
public static partial class FileIdentity
{
    const int AtFdCwd = -100;
    const uint StatxIno = 0x100;

    // struct statx: __u32 stx_mask at 0, __u64 stx_ino at 32, __u32 stx_dev_major at 136 and
    // stx_dev_minor at 140; 256 bytes in all.
    const int StatxSize = 256;
    const int MaskOffset = 0;
    const int InoOffset = 32;
    const int DevMajorOffset = 136;
    const int DevMinorOffset = 140;

    /// <summary>
    /// True or false when both files exist and can be examined; null when that cannot be told (a file is
    /// missing, or the C library has no statx), so the caller falls back to comparing paths.
    /// </summary>
    public static bool? AreSame(string a, string b) =>
        Identify(a) is { } first && Identify(b) is { } second ? first == second : null;

    /// <summary>The device and inode of a file (links followed), or null when it cannot be examined.</summary>
    public static (uint DevMajor, uint DevMinor, ulong Inode)? Identify(string path)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        try
        {
            if (Statx(AtFdCwd, path, 0, StatxIno, buffer) != 0)
            {
                return null;
            }
        }
        catch (Exception ex) when (ex is EntryPointNotFoundException or DllNotFoundException)
        {
            return null;
        }

        if ((MemoryMarshal.Read<uint>(buffer[MaskOffset..]) & StatxIno) == 0)
        {
            return null;
        }

        return (MemoryMarshal.Read<uint>(buffer[DevMajorOffset..]), MemoryMarshal.Read<uint>(buffer[DevMinorOffset..]),
            MemoryMarshal.Read<ulong>(buffer[InoOffset..]));
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirFd, string path, int flags, uint mask, Span<byte> buffer);
}
