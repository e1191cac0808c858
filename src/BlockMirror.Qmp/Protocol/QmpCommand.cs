using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// A command the monitor accepts: its QMP name, the declaration of its arguments (checked before the handler
/// runs, held against every read the handler makes, and listed by query-qmp-schema), what it returns (listed
/// by query-qmp-schema; the tests hold every command's answer against it), and the handler.
/// </summary>
public sealed record QmpCommand(string Name, QapiObject Arguments, QapiType Returns, QmpHandler Handler)
{
    /// <summary>
    /// Runs the command: the arguments are refused from the declaration first (QEMU's visitor order and words),
    /// then the handler reads them through a reader that knows the declaration.
    /// </summary>
    public ValueTask<JsonNode?> InvokeAsync(QmpArguments arguments, CancellationToken cancellationToken) =>
        Handler(arguments.Check(Arguments), cancellationToken);
}
