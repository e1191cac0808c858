using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Client;

/// <summary>What the NBD client driver logs (event ids 610-619). The event names are what <c>blockmirror serve --trace</c> patterns match; keep them.</summary>
static partial class NbdClientLog
{
    [LoggerMessage(EventId = 610, EventName = "nbd_client_close_flush_failed", Level = LogLevel.Warning,
        Message = "node '{Node}': the flush before closing the NBD connection was not made ({Reason}); writes no one flushed may not be on the server's disk")]
    internal static partial void CloseFlushFailed(ILogger logger, string node, string reason);
}
