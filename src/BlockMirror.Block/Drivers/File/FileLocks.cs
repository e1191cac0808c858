using System.Runtime.InteropServices;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers.File;

/// <summary>QEMU's <c>locking</c> option of the file driver.</summary>
public enum FileLockingMode
{
    /// <summary>Lock where open-file-description locks work (Linux 3.15 and later on local file systems).</summary>
    Auto,

    /// <summary>Lock, and fail to open where it cannot be done.</summary>
    On,

    /// <summary>Take no locks and check none.</summary>
    Off,
}

/// <summary>
/// The image locks QEMU's file-posix takes, at the same byte offsets, so that QEMU, qemu-img,
/// qemu-storage-daemon and BlockMirror see each other: a shared (read) open-file-description lock on
/// byte 100+i for each permission i the node takes, and on byte 200+i for each permission it does not
/// share. Another user that wants permission i tests byte 200+i; one that will not share i tests 100+i.
/// </summary>
/// <remarks>
/// OFD locks belong to the open file description, so two nodes in this process on one file conflict as
/// two processes do, and closing the descriptor drops them. The graph changes them under its lock; a
/// reopen moves them to its new descriptor under this object's own, so neither sees the other half done.
/// </remarks>
sealed class FileLocks(string path, SafeFileHandle handle)
{
    const int PermissionBase = 100;
    const int SharedBase = 200;

    readonly Lock _gate = new();
    SafeFileHandle _handle = handle;

    // The bytes held now: PermissionBase+i for each bit of _taken, SharedBase+i for each bit of _unshared.
    BlockPermissions _taken;
    BlockPermissions _unshared;

    /// <summary>False when OFD locks do not work on this file (auto mode only; on fails the open).</summary>
    public static bool Supported(SafeFileHandle handle, FileLockingMode mode, string path)
    {
        if (mode == FileLockingMode.Off)
        {
            return false;
        }

        var probe = new LibC.Flock { Type = LibC.F_WRLCK, Whence = LibC.SEEK_SET, Start = PermissionBase, Length = 1 };
        if (LibC.FcntlLock(handle, LibC.F_OFD_GETLK, ref probe) == 0)
        {
            return true;
        }

        if (mode == FileLockingMode.On)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new BlockOpenException($"Could not open '{path}': cannot lock the image: {LibC.Describe(errno)}", BlockErrnoText.FromErrno(errno));
        }

        return false;
    }

    /// <summary>
    /// Holds the locks for a node that takes <paramref name="takes"/> and shares <paramref name="shares"/>,
    /// after checking that no other user holds a lock that forbids it. Takes the new bytes before checking
    /// (so two users starting at once cannot both pass), and on a refusal goes back to what it held.
    /// </summary>
    public void Apply(BlockPermissions takes, BlockPermissions shares)
    {
        lock (_gate)
        {
            var unshared = BlockPermissions.All & ~shares;
            if (takes == _taken && unshared == _unshared)
            {
                return;
            }

            var (oldTaken, oldUnshared) = (_taken, _unshared);
            try
            {
                Set(_handle, takes | oldTaken, unshared | oldUnshared);
                Check(_handle, takes, unshared);
            }
            catch
            {
                Set(_handle, oldTaken, oldUnshared, ignoreErrors: true);
                throw;
            }

            Set(_handle, takes, unshared, ignoreErrors: true);
        }
    }

    /// <summary>
    /// Refuses to replace or truncate a file another user holds, as QEMU's raw_co_create does before it
    /// truncates: write and resize taken, resize shared with nobody. The returned descriptor holds them until it
    /// is disposed, so nobody else opens the file for writing while its replacement is written; null when the
    /// file cannot be opened (the creation then says what is wrong in its own words) or has no OFD locks.
    /// </summary>
    /// <remarks>O_NONBLOCK: the path may name a FIFO, whose open would otherwise wait for a writer.</remarks>
    public static IDisposable? HoldForReplace(string path)
    {
        var fd = LibC.Open(path, LibC.O_RDONLY | LibC.O_NONBLOCK | LibC.O_CLOEXEC, 0);
        if (fd < 0)
        {
            return null;
        }

        // Closing the descriptor drops what Apply took.
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            if (Supported(handle, FileLockingMode.Auto, path))
            {
                new FileLocks(path, handle).Apply(BlockPermissions.Write | BlockPermissions.Resize, BlockPermissions.All & ~BlockPermissions.Resize);
                return handle;
            }
        }
        catch
        {
            handle.Dispose();
            throw;
        }

        handle.Dispose();
        return null;
    }

    /// <summary>
    /// Whether another open file description holds any of the image lock bytes of the file open as
    /// <paramref name="handle"/>: some QEMU process, or a node of this one, has it open as an image.
    /// </summary>
    public static bool HeldAsImage(SafeFileHandle handle)
    {
        var probe = new LibC.Flock { Type = LibC.F_WRLCK, Whence = LibC.SEEK_SET, Start = PermissionBase, Length = 2 * (SharedBase - PermissionBase) };
        return LibC.FcntlLock(handle, LibC.F_OFD_GETLK, ref probe) == 0 && probe.Type != LibC.F_UNLCK;
    }

    /// <summary>Refuses, as <see cref="HoldForReplace"/> does, and lets go at once: a check before the real work.</summary>
    public static void CheckReplaceable(string path) => HoldForReplace(path)?.Dispose();

    /// <summary>
    /// Holds the same locks on a new descriptor of the file (a reopen) and keeps to it from now on, then
    /// releases the old descriptor's. Its close would drop them too, but a SafeFileHandle closes only when no
    /// call still holds it, and until then they would refuse this node its own permissions.
    /// </summary>
    public void MoveTo(SafeFileHandle handle)
    {
        lock (_gate)
        {
            var (old, taken, unshared) = (_handle, _taken, _unshared);
            _taken = _unshared = BlockPermissions.None;
            _handle = handle;
            Set(handle, taken, unshared, ignoreErrors: true);
            foreach (var (_, _, index) in Bits())
            {
                Unlock(old, PermissionBase + index);
                Unlock(old, SharedBase + index);
            }
        }
    }

    static void Unlock(SafeFileHandle handle, int offset)
    {
        var flock = new LibC.Flock { Type = LibC.F_UNLCK, Whence = LibC.SEEK_SET, Start = offset, Length = 1 };
        LibC.FcntlLock(handle, LibC.F_OFD_SETLK, ref flock);
    }

    void Check(SafeFileHandle handle, BlockPermissions takes, BlockPermissions unshared)
    {
        foreach (var (bit, name, index) in Bits())
        {
            if ((takes & bit) != 0 && IsLockedByOthers(handle, SharedBase + index))
            {
                throw Refused($"Failed to get \"{name}\" lock");
            }
        }

        foreach (var (bit, name, index) in Bits())
        {
            if ((unshared & bit) != 0 && IsLockedByOthers(handle, PermissionBase + index))
            {
                throw Refused($"Failed to get shared \"{name}\" lock");
            }
        }
    }

    BlockGraphException Refused(string message) =>
        new(GraphErrorKind.InUse, message) { Hint = $"Is another process using the image [{path}]?" };

    static IEnumerable<(BlockPermissions Bit, string Name, int Index)> Bits() =>
        Permissions.Bits.Select((b, i) => (b.Bit, b.Name, i));

    void Set(SafeFileHandle handle, BlockPermissions taken, BlockPermissions unshared, bool ignoreErrors = false)
    {
        foreach (var (bit, _, index) in Bits())
        {
            SetByte(handle, PermissionBase + index, bit, taken, ref _taken, ignoreErrors);
            SetByte(handle, SharedBase + index, bit, unshared, ref _unshared, ignoreErrors);
        }
    }

    void SetByte(SafeFileHandle handle, int offset, BlockPermissions bit, BlockPermissions wanted, ref BlockPermissions held, bool ignoreErrors)
    {
        var want = (wanted & bit) != 0;
        if (want == ((held & bit) != 0))
        {
            return;
        }

        var flock = new LibC.Flock { Type = want ? LibC.F_RDLCK : LibC.F_UNLCK, Whence = LibC.SEEK_SET, Start = offset, Length = 1 };
        if (LibC.FcntlLock(handle, LibC.F_OFD_SETLK, ref flock) != 0)
        {
            if (ignoreErrors)
            {
                return;
            }

            // Only an exclusive lock conflicts with a shared one, and QEMU never takes one: say what failed.
            throw new BlockGraphException(GraphErrorKind.InUse, $"Failed to lock byte {offset}: {LibC.Describe(Marshal.GetLastPInvokeError())}")
            {
                Hint = $"Is another process using the image [{path}]?",
            };
        }

        held = want ? held | bit : held & ~bit;
    }

    bool IsLockedByOthers(SafeFileHandle handle, int offset)
    {
        var flock = new LibC.Flock { Type = LibC.F_WRLCK, Whence = LibC.SEEK_SET, Start = offset, Length = 1 };
        if (LibC.FcntlLock(handle, LibC.F_OFD_GETLK, ref flock) != 0)
        {
            throw new BlockGraphException(GraphErrorKind.InUse, $"Failed to get lock byte {offset}: {LibC.Describe(Marshal.GetLastPInvokeError())}");
        }

        return flock.Type != LibC.F_UNLCK;
    }
}
