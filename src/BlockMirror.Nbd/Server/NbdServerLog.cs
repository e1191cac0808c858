using BlockMirror.Nbd.Protocol;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// What the NBD server logs (event ids 300-399): the server and its exports, each client's connection and how
/// it ended (with the reason when the client did not end it cleanly), and at debug level every option and
/// request the server refused. The event names are what <c>blockmirror serve --trace</c> patterns match; keep them.
/// </summary>
public static partial class NbdServerLog
{
    [LoggerMessage(EventId = 301, EventName = "nbd_server_started", Level = LogLevel.Information, Message = "NBD server listening on {Address}{Tls}")]
    internal static partial void ServerStarted(ILogger logger, System.Net.EndPoint address, string tls);

    [LoggerMessage(EventId = 302, EventName = "nbd_server_stopped", Level = LogLevel.Information, Message = "NBD server on {Address} stopped")]
    internal static partial void ServerStopped(ILogger logger, System.Net.EndPoint address);

    [LoggerMessage(EventId = 303, EventName = "nbd_export_added", Level = LogLevel.Information,
        Message = "export '{Id}' added: name '{Name}', node '{Node}', {Access}")]
    internal static partial void ExportAdded(ILogger logger, string id, string name, string node, string access);

    [LoggerMessage(EventId = 304, EventName = "nbd_export_removed", Level = LogLevel.Information, Message = "export '{Id}' removed")]
    internal static partial void ExportRemoved(ILogger logger, string id);

    [LoggerMessage(EventId = 310, EventName = "nbd_client_connected", Level = LogLevel.Information, Message = "client {Client} connected")]
    internal static partial void ClientConnected(ILogger logger, string client);

    [LoggerMessage(EventId = 311, EventName = "nbd_client_export", Level = LogLevel.Information,
        Message = "client {Client} opened export '{Export}' ({Replies} replies)")]
    internal static partial void ClientOpenedExport(ILogger logger, string client, string export, string replies);

    [LoggerMessage(EventId = 312, EventName = "nbd_client_refused", Level = LogLevel.Warning,
        Message = "client {Client} refused in the handshake: {Reason}")]
    internal static partial void ClientRefused(ILogger logger, string client, string reason);

    [LoggerMessage(EventId = 313, EventName = "nbd_client_disconnected", Level = LogLevel.Information, Message = "client {Client} disconnected: {How}")]
    internal static partial void ClientDisconnected(ILogger logger, string client, string how);

    [LoggerMessage(EventId = 314, EventName = "nbd_client_dropped", Level = LogLevel.Warning, Message = "client {Client} dropped {Phase}: {Reason}")]
    internal static partial void ClientDropped(ILogger logger, string client, string phase, string reason);

    [LoggerMessage(EventId = 320, EventName = "nbd_option_refused", Level = LogLevel.Debug,
        Message = "client {Client}: option {Option} refused with {Reply}: {Reason}")]
    internal static partial void OptionRefused(ILogger logger, string client, NbdOption option, NbdOptionReply reply, string reason);

    [LoggerMessage(EventId = 321, EventName = "nbd_request_refused", Level = LogLevel.Debug,
        Message = "client {Client} export '{Export}': {Command} offset {Offset} length {Length} refused with {Error}: {Reason}")]
    internal static partial void RequestRefused(ILogger logger, string client, string export, NbdCommand command, ulong offset, uint length, NbdError error, string reason);

    [LoggerMessage(EventId = 322, EventName = "nbd_request_failed", Level = LogLevel.Warning,
        Message = "client {Client} export '{Export}': {Command} offset {Offset} length {Length} failed with {Error}: {Reason}")]
    internal static partial void RequestFailed(ILogger logger, string client, string export, NbdCommand command, ulong offset, uint length, NbdError error, string reason);
}
