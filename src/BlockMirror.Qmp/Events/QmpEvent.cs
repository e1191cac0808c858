using System.Text.Json.Nodes;

namespace BlockMirror.Qmp.Events;

/// <summary>An event of the daemon itself (not of a job), e.g. BLOCK_EXPORT_DELETED.</summary>
public sealed record QmpEvent(string Name, JsonObject Data, DateTimeOffset Timestamp);
