using System.Globalization;
using System.Text;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli.Daemon;

/// <summary>
/// serve's <c>--pidfile</c>, kept as qemu-storage-daemon keeps it (qemu_write_pidfile): the file is locked before
/// it is truncated, the lock is held for as long as the daemon runs, and the file is removed at exit. A second
/// daemon given the same file, or a file another process holds (an image QEMU has open, whose locks conflict with
/// this one), is refused in QEMU's words and nothing is written: before, the pid was written over whatever the
/// file held and the file was removed at exit, image or not.
/// </summary>
/// <remarks>
/// The lock is an open-file-description write lock over the whole file: it conflicts with QEMU's (a POSIX record
/// lock) and with QEMU's and our image locks, and unlike a POSIX lock it is not dropped when some other descriptor
/// of the file is closed. Only a regular file is locked and truncated. A FIFO is written as it is (the tests hold a
/// daemon's start-up still with one, as a reader of the pid would); a block device is refused, where QEMU's failed
/// truncation would go on to unlink the device node.
/// </remarks>
sealed class PidFile : IDisposable
{
    readonly string _path;
    readonly FileStream? _file;
    readonly (uint, uint, ulong)? _identity;

    PidFile(string path, FileStream? file, (uint, uint, ulong)? identity)
    {
        _path = path;
        _file = file;
        _identity = identity;
    }

    /// <summary>Creates (or takes over) the pid file and writes this process's id into it; throws <see cref="UsageException"/> in QEMU's words.</summary>
    public static PidFile Write(string path)
    {
        while (true)
        {
            FileStream file;
            try
            {
                // O_WRONLY | O_CREAT, mode 0600 (as QEMU's): nothing is truncated before the lock is held.
                var options = new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.Write, Share = FileShare.ReadWrite, BufferSize = 0 };
                if (!OperatingSystem.IsWindows())
                {
                    options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
                }

                file = new FileStream(path, options);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw Refused($"Could not open '{path}': {ex.Message}");
            }

            var handle = file.SafeFileHandle;
            try
            {
                var opened = $"/proc/self/fd/{handle.DangerousGetHandle()}";
                var kind = FileStatus.KindOf(opened);
                if (kind == UnixFileKind.BlockDevice)
                {
                    throw Refused($"'{path}' is a block device, not a pid file");
                }

                var identity = FileStatus.Identify(opened);
                if (kind == UnixFileKind.Regular)
                {
                    if (WholeFileLock.TryTake(handle) is var errno and not 0)
                    {
                        throw Refused($"Cannot lock pid file: {BlockErrnoText.DescribeErrno(errno)}");
                    }

                    // The name may have been removed or given to a new file between the open and the lock (another
                    // daemon leaving, or starting): then the lock holds nothing, and the open starts over.
                    if (FileStatus.Identify(path) != identity)
                    {
                        file.Dispose();
                        continue;
                    }

                    file.SetLength(0);
                }

                file.Write(Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n"));
                if (kind != UnixFileKind.Regular)
                {
                    // Nothing locked to hold; and a reader of a FIFO sees the end of the pid only once it is closed.
                    file.Dispose();
                    return new PidFile(path, null, identity);
                }

                return new PidFile(path, file, identity);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                file.Dispose();
                throw Refused($"Failed to write pid file: {ex.Message}");
            }
            catch
            {
                file.Dispose();
                throw;
            }
        }
    }

    /// <summary>At exit: removes the file if its name still names the file this daemon wrote, then lets the lock go.</summary>
    public void Dispose()
    {
        try
        {
            if (_identity is not null && FileStatus.Identify(_path) == _identity)
            {
                File.Delete(_path);
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Left behind, as a daemon killed outright leaves it: the next one takes it over.
        }

        _file?.Dispose();
    }

    static UsageException Refused(string why) => new($"cannot create PID file: {why}");
}
