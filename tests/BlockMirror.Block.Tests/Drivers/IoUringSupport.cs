using BlockMirror.Block.Drivers.File.IoUring;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>Skips an <c>aio=io_uring</c> case where the kernel refuses io_uring (the driver would fall back to the threads).</summary>
static class IoUringSupport
{
    public static void SkipUnlessAvailable(string aio)
    {
        if (aio == "io_uring")
        {
            Skip.If(FileIoUring.TryGetShared(out var failure) is null, $"io_uring is not available: {failure}");
        }
    }
}
