using Microsoft.Extensions.Logging;

namespace BlockMirror.Qmp.Server;

/// <summary>
/// What the QMP monitors log (event ids 400-499): monitor sockets, clients connecting and leaving, and at debug
/// level every command and every error answer. The event names are what <c>blockmirror serve --trace</c>
/// patterns match; keep them.
/// </summary>
public static partial class QmpServerLog
{
    [LoggerMessage(EventId = 401, EventName = "qmp_monitor_listening", Level = LogLevel.Information, Message = "QMP monitor listening on {Address}")]
    internal static partial void Listening(ILogger logger, System.Net.EndPoint address);

    [LoggerMessage(EventId = 402, EventName = "qmp_client_connected", Level = LogLevel.Information, Message = "monitor client {Client} connected")]
    internal static partial void ClientConnected(ILogger logger, string client);

    [LoggerMessage(EventId = 403, EventName = "qmp_client_disconnected", Level = LogLevel.Information, Message = "monitor client {Client} disconnected")]
    internal static partial void ClientDisconnected(ILogger logger, string client);

    [LoggerMessage(EventId = 404, EventName = "qmp_command", Level = LogLevel.Debug, Message = "monitor client {Client}: {Command}")]
    internal static partial void Command(ILogger logger, string client, string command);

    [LoggerMessage(EventId = 405, EventName = "qmp_command_error", Level = LogLevel.Debug,
        Message = "monitor client {Client}: error {Class}: {Description}")]
    internal static partial void CommandError(ILogger logger, string client, string @class, string description);

    [LoggerMessage(EventId = 406, EventName = "qmp_client_overflow", Level = LogLevel.Warning,
        Message = "monitor client {Client} disconnected: it left {Unread} bytes of output unread, over the limit of {Limit} (events are never dropped, so the client goes)")]
    internal static partial void ClientOverflow(ILogger logger, string client, long unread, int limit);
}
