using BlockMirror.Block.Drivers.File.IoUring;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// Skips an <c>aio=io_uring</c> case, or a case of the default engine (named "default", opened without <c>aio</c>),
/// where the kernel refuses io_uring (the driver would fall back to the threads).
/// </summary>
static class IoUringSupport
{
    public static void SkipUnlessAvailable(string aio)
    {
        if (aio is "io_uring" or "default")
        {
            Skip.If(FileIoUring.TryGetShared(out var failure) is null, $"io_uring is not available: {failure}");
        }
    }
}
