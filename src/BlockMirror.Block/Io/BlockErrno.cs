namespace BlockMirror.Block.Io;

/// <summary>
/// Linux errno values that travel with a block error. Error policies (<c>enospc</c>), NBD replies
/// and blkdebug rules need the number, not only a message.
/// </summary>
public enum BlockErrno
{
    EPERM = 1,
    ENOENT = 2,
    EIO = 5,
    ENXIO = 6,
    EBADF = 9,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EBUSY = 16,
    EEXIST = 17,
    ENODEV = 19,
    EISDIR = 21,
    EINVAL = 22,
    EFBIG = 27,
    ENOSPC = 28,
    EROFS = 30,
    ELOOP = 40,
    ENOTSUP = 95,
    ESHUTDOWN = 108,
    ECANCELED = 125,
}

/// <summary>Human text for <see cref="BlockErrno"/>, worded as glibc's strerror so users recognise it.</summary>
public static class BlockErrnoText
{
    public static string Describe(this BlockErrno errno) => errno switch
    {
        BlockErrno.EPERM => "Operation not permitted",
        BlockErrno.ENOENT => "No such file or directory",
        BlockErrno.EIO => "Input/output error",
        BlockErrno.ENXIO => "No such device or address",
        BlockErrno.EBADF => "Bad file descriptor",
        BlockErrno.EAGAIN => "Resource temporarily unavailable",
        BlockErrno.ENOMEM => "Cannot allocate memory",
        BlockErrno.EACCES => "Permission denied",
        BlockErrno.EBUSY => "Device or resource busy",
        BlockErrno.EEXIST => "File exists",
        BlockErrno.ENODEV => "No such device",
        BlockErrno.EISDIR => "Is a directory",
        BlockErrno.EINVAL => "Invalid argument",
        BlockErrno.EFBIG => "File too large",
        BlockErrno.ENOSPC => "No space left on device",
        BlockErrno.EROFS => "Read-only file system",
        BlockErrno.ELOOP => "Too many levels of symbolic links",
        BlockErrno.ENOTSUP => "Operation not supported",
        BlockErrno.ESHUTDOWN => "Cannot send after transport endpoint shutdown",
        BlockErrno.ECANCELED => "Operation canceled",
        _ => $"Unknown error {(int)errno}",
    };

    /// <summary>The C library's text for any errno value, also one <see cref="BlockErrno"/> does not name.</summary>
    public static string DescribeErrno(int errno) => Interop.LibC.Describe(errno);

    /// <summary>Maps a raw errno from a system call; unknown values become EIO.</summary>
    public static BlockErrno FromErrno(int errno) =>
        Enum.IsDefined(typeof(BlockErrno), errno) ? (BlockErrno)errno : BlockErrno.EIO;
}
