using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Protocol;

/// <summary>A command handler: reads its arguments (all of them, before acting) and returns the reply's <c>return</c> value, null for <c>{}</c>.</summary>
public delegate ValueTask<JsonNode?> QmpHandler(QmpArguments arguments, CancellationToken cancellationToken);

/// <summary>
/// The commands a monitor accepts, by QMP name, each with its declaration.
/// </summary>
/// <remarks>
/// To add a command, declare its arguments as QEMU's QAPI schema has them, in QAPI's order and notation
/// (<c>*</c> marks an optional member), and what it returns:
/// <code>
/// Commands.Add("block-job-set-speed", new QapiObject("q_obj_block-job-set-speed-arg", ("device", QapiBuiltin.Str), ("speed", QapiBuiltin.Int)),
///     (arguments, _) => { var device = arguments.RequireString("device"); ... arguments.CheckNoneUnexpected(); ... });
/// </code>
/// The declaration refuses unknown members, missing required ones, wrong types and values outside an enum
/// before the handler runs, and the handler's reader throws on a read of a member it does not list, so what
/// <c>query-qmp-schema</c> says is what is accepted. The handler still reads every member it acts on (and
/// calls <c>CheckNoneUnexpected</c>: a declared member it forgot to read is then refused, which the test that
/// runs every command with every declared member catches). Shared types (enums, BlockJobInfo, ...) live in
/// <c>Commands/QmpTypes.cs</c>; the driver options of blockdev-add in each driver's declaration.
/// </remarks>
public sealed class QmpCommandTable
{
    readonly Dictionary<string, QmpCommand> _commands = new(StringComparer.Ordinal);

    /// <summary>Adds a command that answers <c>{}</c>.</summary>
    public void Add(string name, QapiObject arguments, QmpHandler handler) => Add(name, arguments, QapiObject.Empty, handler);

    /// <summary>Adds a command that answers a value of type <paramref name="returns"/>.</summary>
    public void Add(string name, QapiObject arguments, QapiType returns, QmpHandler handler) =>
        _commands.Add(name, new QmpCommand(name, arguments, returns, handler));

    public bool TryGet(string name, out QmpCommand command) => _commands.TryGetValue(name, out command!);

    /// <summary>Every command, by name.</summary>
    public IEnumerable<QmpCommand> All => _commands.Values.OrderBy(c => c.Name, StringComparer.Ordinal);

    /// <summary>Every command name, for <c>query-commands</c>.</summary>
    public IEnumerable<string> Names => _commands.Keys.Order(StringComparer.Ordinal);
}
