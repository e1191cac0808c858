using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;
using BlockMirror.Qmp.Events;
using BlockMirror.Qmp.Protocol;
using BlockMirror.Qmp.Server;

namespace BlockMirror.Qmp.Commands;

/// <summary>query-version, query-commands, query-qmp-schema, quit.</summary>
public sealed partial class StorageDaemon
{
    static readonly QapiObject VersionTriple = new("VersionTriple", ("major", QapiBuiltin.Int), ("minor", QapiBuiltin.Int), ("micro", QapiBuiltin.Int));

    static readonly QapiObject VersionInfo = new("VersionInfo", ("qemu", VersionTriple), ("package", QapiBuiltin.Str));

    static readonly QapiObject CommandInfo = new("CommandInfo", ("name", QapiBuiltin.Str));

    void AddMiscCommands()
    {
        Commands.Add("query-version", QapiObject.Empty, VersionInfo, (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            return ValueTask.FromResult<JsonNode?>(new JsonObject
            {
                ["qemu"] = new JsonObject { ["micro"] = QmpServer.Micro, ["minor"] = QmpServer.Minor, ["major"] = QmpServer.Major },
                ["package"] = QmpServer.Package,
            });
        });
        Commands.Add("query-commands", QapiObject.Empty, new QapiArray(CommandInfo), (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            var list = new JsonArray((JsonNode)new JsonObject { ["name"] = Protocol.QmpCapabilities.Name });
            foreach (var name in Commands.Names)
            {
                list.Add((JsonNode)new JsonObject { ["name"] = name });
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
        Commands.Add("query-qmp-schema", QapiObject.Empty, new QapiArray(QmpIntrospection.SchemaInfo), (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            return ValueTask.FromResult<JsonNode?>(QmpIntrospection.Describe(Commands.All, QmpEvents.All));
        });
        Commands.Add("quit", QapiObject.Empty, async (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            await StopServingAsync().ConfigureAwait(false);
            _quit.TrySetResult();
            return Empty;
        });
    }
}
