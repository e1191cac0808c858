using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Interop;

/// <summary>
/// An open-file-description write lock over a whole file, held until the descriptor is closed: conflicts with any
/// other lock on the file, QEMU's POSIX record locks and the image locks of QEMU and of this project alike (a
/// pid file's lock, as qemu_write_pidfile takes one).
/// </summary>
public static class WholeFileLock
{
    /// <summary>Takes the lock without waiting: 0, or the errno of the refusal (EAGAIN when another holds a conflicting lock).</summary>
    public static int TryTake(SafeFileHandle handle)
    {
        var whole = new LibC.Flock { Type = LibC.F_WRLCK, Whence = LibC.SEEK_SET, Start = 0, Length = 0 };
        return LibC.FcntlLock(handle, LibC.F_OFD_SETLK, ref whole) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }
}
