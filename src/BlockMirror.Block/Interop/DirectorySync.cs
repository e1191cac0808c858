using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Interop;

/// <summary>Makes a directory's entries durable (fsync of the directory), which the BCL cannot open a handle for.</summary>
public static class DirectorySync
{
    /// <summary>
    /// Flushes <paramref name="directory"/>, so that a file created (or removed) in it survives a power loss by name
    /// too. False when the directory cannot be opened or the file system refuses (the file's own data is unaffected).
    /// </summary>
    public static bool Flush(string directory)
    {
        var fd = LibC.Open(directory, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
        if (fd < 0)
        {
            return false;
        }

        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        return LibC.FDataSync(handle) == 0;
    }
}
