using Microsoft.Extensions.Logging;

namespace BlockMirror.Jobs;

/// <summary>
/// What jobs log (event ids 200-299): every state change, I/O errors and the action their policy took,
/// READY, and how each job ended. The event names are what <c>blockmirror serve --trace</c> patterns match; keep them.
/// </summary>
public static partial class JobLog
{
    [LoggerMessage(EventId = 201, EventName = "job_state_change", Level = LogLevel.Information, Message = "job '{Id}' is now {Status}")]
    internal static partial void StateChange(ILogger logger, string id, string status);

    [LoggerMessage(EventId = 202, EventName = "job_ready", Level = LogLevel.Information,
        Message = "{Type} job '{Id}' is ready to complete: {Offset} of {Length} bytes copied")]
    internal static partial void Ready(ILogger logger, string type, string id, long offset, long length);

    [LoggerMessage(EventId = 203, EventName = "job_io_error", Level = LogLevel.Warning,
        Message = "job '{Id}': {Operation} error ({Error}); action: {Action}")]
    internal static partial void IoError(ILogger logger, string id, string operation, string error, string action);

    [LoggerMessage(EventId = 204, EventName = "job_completed", Level = LogLevel.Information,
        Message = "{Type} job '{Id}' completed: {Offset} of {Length} bytes")]
    internal static partial void Completed(ILogger logger, string type, string id, long offset, long length);

    [LoggerMessage(EventId = 205, EventName = "job_failed", Level = LogLevel.Error, Message = "{Type} job '{Id}' failed: {Error}")]
    internal static partial void Failed(ILogger logger, string type, string id, string error);

    [LoggerMessage(EventId = 206, EventName = "job_cancelled", Level = LogLevel.Information,
        Message = "{Type} job '{Id}' cancelled: {Offset} of {Length} bytes")]
    internal static partial void Cancelled(ILogger logger, string type, string id, long offset, long length);
}
