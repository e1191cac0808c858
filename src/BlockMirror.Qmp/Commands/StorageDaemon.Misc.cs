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
            // qemu-storage-daemon closes its exports, then force-cancels every job and waits for each to end,
            // all before it answers quit: the monitor sees each export's deletion and each job's cancellation
            // and state changes (aborting, BLOCK_JOB_CANCELLED, concluded, null) before the reply.
            await CloseExportsAsync().ConfigureAwait(false);
            await Jobs.CancelAllAsync().ConfigureAwait(false);
            _quit.TrySetResult();
            return Empty;
        });
    }
}
