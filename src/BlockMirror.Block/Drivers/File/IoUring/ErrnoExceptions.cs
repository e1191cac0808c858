using BlockMirror.Block.Interop;

namespace BlockMirror.Block.Drivers.File.IoUring;

/// <summary>
/// The exception <see cref="RandomAccess"/> throws on Linux for a failed read or write with a given errno
/// (its Interop.GetExceptionForIoErrno, for a handle without a path), so that the io_uring engine fails a
/// call exactly as the I/O threads do and the node turns it into the same block error: an IOException
/// whose HResult is the errno (EIO, ENOSPC, EINVAL, ...), except for the few errnos .NET maps to its own types.
/// </summary>
static class ErrnoExceptions
{
    const int EPERM = 1;
    const int ENOENT = 2;
    const int EBADF = 9;
    const int EACCES = 13;
    const int EFBIG = 27;
    const int ENAMETOOLONG = 36;
    const int ECANCELED = 125;

    public static Exception For(int errno)
    {
        var message = LibC.Describe(errno);
        return errno switch
        {
            EPERM or EBADF or EACCES => new UnauthorizedAccessException("Access to the path is denied.", new IOException(message, errno)),
            ENOENT => new FileNotFoundException("Unable to find the specified file."),
            ENAMETOOLONG => new PathTooLongException("The specified file name or path is too long, or a component of the specified path is too long."),
            ECANCELED => new OperationCanceledException(),
            EFBIG => new ArgumentOutOfRangeException("Specified file length was too large for the file system.", (Exception?)null),
            _ => new IOException(message, errno),
        };
    }
}
