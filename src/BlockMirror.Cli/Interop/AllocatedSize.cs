using System.Runtime.InteropServices;

namespace BlockMirror.Cli.Interop;

/// <summary>
/// The bytes a file occupies on disk (<c>st_blocks * 512</c>), which <c>qemu-img info</c> shows as
/// "disk size" / <c>actual-size</c>. Read with statx(2), whose layout is the same on every Linux architecture.
/// </summary>
static partial class AllocatedSize
{
    const int AtFdCwd = -100;
    const uint StatxBlocks = 0x400;

    // struct statx: __u32 stx_mask at 0, __u64 stx_blocks at 48; 256 bytes in all.
    const int StatxSize = 256;
    const int MaskOffset = 0;
    const int BlocksOffset = 48;

    /// <summary>Allocated bytes of the file (links followed), or null when they cannot be told.</summary>
    public static long? Of(string path)
    {
        Span<byte> buffer = stackalloc byte[StatxSize];
        try
        {
            if (Statx(AtFdCwd, path, 0, StatxBlocks, buffer) != 0)
            {
                return null;
            }
        }
        catch (Exception ex) when (ex is EntryPointNotFoundException or DllNotFoundException)
        {
            return null;
        }

        if ((MemoryMarshal.Read<uint>(buffer[MaskOffset..]) & StatxBlocks) == 0)
        {
            return null;
        }

        return (long)MemoryMarshal.Read<ulong>(buffer[BlocksOffset..]) * 512;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirFd, string path, int flags, uint mask, Span<byte> buffer);
}
