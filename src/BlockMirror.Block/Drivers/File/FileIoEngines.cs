using BlockMirror.Block.Drivers.File.IoUring;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Block.Drivers.File;

/// <summary>Which engine makes a file node's I/O calls, from its <c>aio</c> option.</summary>
static class FileIoEngines
{
    /// <summary>
    /// <c>io_uring</c>: the process's ring, or the I/O threads with one warning saying why where the kernel
    /// has none (ENOSYS), forbids it (EPERM: kernel.io_uring_disabled, seccomp) or cannot map it.
    /// <c>threads</c> and <c>native</c>: the I/O threads (QEMU's native is Linux AIO, which this driver
    /// does not implement; its threads serve the same requests).
    /// </summary>
    public static IFileIo Select(string aio, ILogger logger, string nodeName) =>
        Select(aio, logger, nodeName, static () => (FileIoUring.TryGetShared(out var failure), failure));

    /// <summary>As above, with the io_uring engine from <paramref name="ioUring"/> (tests inject a failing setup here).</summary>
    internal static IFileIo Select(string aio, ILogger logger, string nodeName, Func<(IFileIo? Engine, string? Failure)> ioUring)
    {
        if (aio != "io_uring")
        {
            return FileIoThreads.Shared;
        }

        var (engine, failure) = ioUring();
        if (engine is not null)
        {
            return engine;
        }

        FileDriverLog.AioFallback(logger, nodeName, aio, failure ?? "unknown reason");
        return FileIoThreads.Shared;
    }
}
