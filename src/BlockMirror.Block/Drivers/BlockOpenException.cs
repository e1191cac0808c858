using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// A node could not be opened: a missing file, a bad option, a corrupt image header. Thrown before the
/// node exists, so nothing was added to the graph and nothing was written.
/// </summary>
public sealed class BlockOpenException(string message, BlockErrno errno = BlockErrno.EINVAL, Exception? inner = null)
    : IOException(message, inner)
{
    public BlockErrno Errno { get; } = errno;

    /// <summary>
    /// More for a person at a terminal (QEMU's error_append_hint: what a server said, what to try). The command
    /// line prints it on the lines after the error; QMP leaves it out, as QEMU's monitor does.
    /// </summary>
    public string? Hint { get; init; }

    /// <summary>
    /// <c>Could not create 'PATH': REASON</c>, QEMU's words, for a file that could not be created: the reason
    /// is the C library's text for the errno .NET's exception stands for, not .NET's own sentence ("Could not
    /// find a part of the path ...", which also names the path a second time).
    /// </summary>
    public static BlockOpenException CouldNotCreate(string path, Exception ex)
    {
        var errno = ex switch
        {
            FileNotFoundException or DirectoryNotFoundException => (int)BlockErrno.ENOENT,
            UnauthorizedAccessException => (int)BlockErrno.EACCES,
            PathTooLongException => ENAMETOOLONG,
            // .NET reports EEXIST as Windows' ERROR_FILE_EXISTS (80), bare or as an HRESULT.
            IOException { HResult: 80 or unchecked((int)0x80070050) } => (int)BlockErrno.EEXIST,
            // Other errnos .NET has no exception type for travel as the HResult.
            IOException { HResult: > 0 and < 4096 } io => io.HResult,
            _ => (int)BlockErrno.EIO,
        };
        return new($"Could not create '{path}': {Interop.LibC.Describe(errno)}", BlockErrnoText.FromErrno(errno), ex);
    }

    /// <summary>
    /// A new file that could not be given its size, in QEMU's words ("Could not resize file: File too large").
    /// .NET reports EFBIG (a size over the file system's or the process's limit) as an ArgumentOutOfRangeException.
    /// </summary>
    public static BlockOpenException CouldNotResize(string path, Exception ex)
    {
        var errno = ex switch
        {
            ArgumentOutOfRangeException => EFBIG,
            IOException { HResult: > 0 and < 4096 } io => io.HResult,
            _ => (int)BlockErrno.EIO,
        };
        return new($"Could not create '{path}': Could not resize file: {Interop.LibC.Describe(errno)}", BlockErrnoText.FromErrno(errno), ex);
    }

    const int ENAMETOOLONG = 36;
    const int EFBIG = 27;
}
