using Microsoft.Extensions.Logging;

namespace BlockMirror.Block.Drivers.File;

/// <summary>What the file driver logs (event ids 600-609). The event names are what <c>blockmirror serve --trace</c> patterns match; keep them.</summary>
static partial class FileDriverLog
{
    [LoggerMessage(EventId = 601, EventName = "file_aio_fallback", Level = LogLevel.Warning,
        Message = "node '{Node}': aio={Aio} is not available ({Reason}); using aio=threads")]
    internal static partial void AioFallback(ILogger logger, string node, string aio, string reason);

    [LoggerMessage(EventId = 602, EventName = "file_close_sync_failed", Level = LogLevel.Warning,
        Message = "node '{Node}': fdatasync of {File} before closing it failed ({Reason}); writes no one flushed may not be on the disk")]
    internal static partial void CloseSyncFailed(ILogger logger, string node, string file, string reason);
}
