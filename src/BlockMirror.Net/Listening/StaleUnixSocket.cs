using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace BlockMirror.Net.Listening;

/// <summary>
/// A Unix socket file left behind by a daemon that died before it could remove it (killed, out of memory, the
/// machine reset), which would make a restarted daemon fail with "Address already in use". QEMU removes whatever is
/// at the path before it binds, a regular file or a socket another daemon listens on included; this removes only a
/// socket file nobody listens on. Anything else at the path is someone's: the bind fails and names it.
/// </summary>
static partial class StaleUnixSocket
{
    /// <summary>Removes <paramref name="path"/> if it is a socket file that refuses connections; true when it did.</summary>
    public static bool TryRemove(string path)
    {
        if (!OperatingSystem.IsLinux() || !IsSocketFile(path))
        {
            return false;
        }

        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            // Accepted: a daemon listens there.
            return false;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            // Nobody listens: the file is all that is left of its daemon.
        }
        catch (SocketException)
        {
            // A full backlog (EAGAIN: a busy listener) or anything not understood: leave it.
            return false;
        }

        File.Delete(path);
        return true;
    }

    const int AtFdCwd = -100;
    const int AtSymlinkNoFollow = 0x100;
    const uint StatxType = 0x1;
    const int ModeOffset = 28;
    const ushort TypeMask = 0xf000;
    const ushort SocketFileType = 0xc000;

    /// <summary>Whether the path itself (not what a link points to) is a socket file, by statx(2)'s stx_mode.</summary>
    static bool IsSocketFile(string path)
    {
        Span<byte> buffer = stackalloc byte[256];
        try
        {
            return Statx(AtFdCwd, path, AtSymlinkNoFollow, StatxType, buffer) == 0
                && (MemoryMarshal.Read<ushort>(buffer[ModeOffset..]) & TypeMask) == SocketFileType;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
    }

    [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirFd, string path, int flags, uint mask, Span<byte> buffer);
}
