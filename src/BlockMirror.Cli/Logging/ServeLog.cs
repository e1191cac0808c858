using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// What <c>blockmirror serve</c> itself logs (event ids 500-599): that it serves, and why it stops. The event
/// names are what <c>--trace</c> patterns match; keep them.
/// </summary>
public static partial class ServeLog
{
    [LoggerMessage(EventId = 501, EventName = "serve_started", Level = LogLevel.Information, Message = "serving (pid {Pid})")]
    internal static partial void Started(ILogger logger, int pid);

    [LoggerMessage(EventId = 502, EventName = "serve_stopping", Level = LogLevel.Information, Message = "stopping: {Why}")]
    internal static partial void Stopping(ILogger logger, string why);
}
