using System.Text.Json.Nodes;
using BlockMirror.Qmp.Server;

namespace BlockMirror.Qmp.Commands;

/// <summary>query-version, query-commands, quit.</summary>
public sealed partial class StorageDaemon
{
    void AddMiscCommands()
    {
        Commands.Add("query-version", (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            return ValueTask.FromResult<JsonNode?>(new JsonObject
            {
                ["qemu"] = new JsonObject { ["micro"] = QmpServer.Micro, ["minor"] = QmpServer.Minor, ["major"] = QmpServer.Major },
                ["package"] = QmpServer.Package,
            });
        });
        Commands.Add("query-commands", (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            var list = new JsonArray((JsonNode)new JsonObject { ["name"] = "qmp_capabilities" });
            foreach (var name in Commands.Names)
            {
                list.Add((JsonNode)new JsonObject { ["name"] = name });
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
        Commands.Add("quit", async (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            await StopServingAsync().ConfigureAwait(false);
            _quit.TrySetResult();
            return Empty;
        });
    }
}
