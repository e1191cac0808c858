using Microsoft.Extensions.Logging;

namespace BlockMirror.Block.Graph;

/// <summary>
/// What the node graph logs (event ids 100-199): nodes opened and closed, users moved from one node to another
/// (a filter inserted or removed, a mirror's switch-over), backing files changed, nodes reopened, root users
/// attached and detached. The event names are what <c>blockmirror serve --trace</c> patterns match; keep them.
/// </summary>
public static partial class BlockGraphLog
{
    [LoggerMessage(EventId = 101, EventName = "graph_node_added", Level = LogLevel.Information,
        Message = "node '{Node}' added: driver {Driver}, {Access}")]
    internal static partial void NodeAdded(ILogger logger, string node, string driver, string access);

    [LoggerMessage(EventId = 102, EventName = "graph_node_removed", Level = LogLevel.Information, Message = "node '{Node}' closed")]
    internal static partial void NodeRemoved(ILogger logger, string node);

    [LoggerMessage(EventId = 103, EventName = "graph_node_close_failed", Level = LogLevel.Warning,
        Message = "node '{Node}' failed to close: {Error}")]
    internal static partial void NodeCloseFailed(ILogger logger, string node, string error);

    [LoggerMessage(EventId = 104, EventName = "graph_node_replaced", Level = LogLevel.Information,
        Message = "users of node '{From}' moved to node '{To}'")]
    internal static partial void NodeReplaced(ILogger logger, string from, string to);

    [LoggerMessage(EventId = 105, EventName = "graph_child_replaced", Level = LogLevel.Information,
        Message = "child '{Child}' of {Parent} moved from node '{From}' to node '{To}'")]
    internal static partial void ChildReplaced(ILogger logger, string child, string parent, string from, string to);

    [LoggerMessage(EventId = 106, EventName = "graph_backing_changed", Level = LogLevel.Information,
        Message = "backing of node '{Node}' set to {Backing}")]
    internal static partial void BackingChanged(ILogger logger, string node, string backing);

    [LoggerMessage(EventId = 107, EventName = "graph_node_reopened", Level = LogLevel.Information, Message = "node '{Node}' reopened {Access}")]
    internal static partial void NodeReopened(ILogger logger, string node, string access);

    [LoggerMessage(EventId = 108, EventName = "graph_root_attached", Level = LogLevel.Debug,
        Message = "{User} attached to node '{Node}' as '{Edge}'")]
    internal static partial void RootAttached(ILogger logger, string user, string node, string edge);

    [LoggerMessage(EventId = 109, EventName = "graph_root_detached", Level = LogLevel.Debug,
        Message = "{User} detached from node '{Node}'")]
    internal static partial void RootDetached(ILogger logger, string user, string node);
}
