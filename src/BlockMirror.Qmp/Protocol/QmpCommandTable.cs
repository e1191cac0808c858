using System.Text.Json.Nodes;

namespace BlockMirror.Qmp.Protocol;

/// <summary>A command handler: reads its arguments (all of them, before acting) and returns the reply's <c>return</c> value, null for <c>{}</c>.</summary>
public delegate ValueTask<JsonNode?> QmpHandler(QmpArguments arguments, CancellationToken cancellationToken);

/// <summary>The commands a monitor accepts, by QMP name.</summary>
public sealed class QmpCommandTable
{
    readonly Dictionary<string, QmpHandler> _handlers = new(StringComparer.Ordinal);

    public void Add(string name, QmpHandler handler) => _handlers.Add(name, handler);

    public bool TryGet(string name, out QmpHandler handler) => _handlers.TryGetValue(name, out handler!);

    /// <summary>Every command name, for <c>query-commands</c>.</summary>
    public IEnumerable<string> Names => _handlers.Keys.Order(StringComparer.Ordinal);
}
