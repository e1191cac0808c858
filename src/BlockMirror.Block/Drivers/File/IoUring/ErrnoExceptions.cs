using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.File.IoUring;

/// <summary>
/// The exception <see cref="RandomAccess"/> throws on Linux for a failed read or write with a given errno
/// (its Interop.GetExceptionForIoErrno, for a handle without a path), so that the io_uring engine fails a
/// call exactly as the I/O threads do and the node turns it into the same block error: an IOException
/// whose HResult is the errno (EIO, ENOSPC, EINVAL, ...), except for the few errnos .NET maps to its own types.
/// </summary>
static class ErrnoExceptions
{
    // Not a BlockErrno: no block error carries it (it is only ever a path's).
    const int ENAMETOOLONG = 36;

    public static Exception For(int errno)
    {
        var message = LibC.Describe(errno);
        return (BlockErrno)errno switch
        {
            BlockErrno.EPERM or BlockErrno.EBADF or BlockErrno.EACCES => new UnauthorizedAccessException("Access to the path is denied.", new IOException(message, errno)),
            BlockErrno.ENOENT => new FileNotFoundException("Unable to find the specified file."),
            (BlockErrno)ENAMETOOLONG => new PathTooLongException("The specified file name or path is too long, or a component of the specified path is too long."),
            BlockErrno.ECANCELED => new OperationCanceledException(),
            BlockErrno.EFBIG => new ArgumentOutOfRangeException("Specified file length was too large for the file system.", (Exception?)null),
            _ => new IOException(message, errno),
        };
    }
}
