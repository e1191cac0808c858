using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using BlockMirror.Nbd.Server;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>nbd-server-start, nbd-server-stop, block-export-add, block-export-del, query-block-exports.</summary>
public sealed partial class StorageDaemon
{
    void AddExportCommands()
    {
        Commands.Add("nbd-server-start", (arguments, _) =>
        {
            var address = arguments.OptionalObject("addr") ?? throw QmpException.Generic("Parameter 'addr' is missing");
            var endPoint = ReadSocketAddress(address, legacy: true);
            arguments.Accept("max-connections");
            if (arguments.OptionalString("tls-creds") is not null || arguments.OptionalString("tls-authz") is not null)
            {
                throw QmpException.Generic("TLS is not supported by this NBD server");
            }

            arguments.CheckNoneUnexpected();
            StartNbdServer(endPoint);
            return ValueTask.FromResult(Empty);
        });

        Commands.Add("nbd-server-stop", async (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            if (Nbd is null)
            {
                throw QmpException.Generic("NBD server not running");
            }

            await StopNbdServerAsync().ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("block-export-add", (arguments, _) =>
        {
            var type = arguments.OptionalEnum("type", "nbd", "vhost-user-blk", "fuse", "vduse-blk") ?? throw QmpException.Generic("Parameter 'type' is missing");
            var id = arguments.RequireString("id");
            var nodeName = arguments.RequireString("node-name");
            var name = arguments.OptionalString("name");
            var description = arguments.OptionalString("description");
            var writable = arguments.OptionalBool("writable") ?? false;
            var writethrough = arguments.OptionalBool("writethrough") ?? false;
            arguments.Accept("iothread", "fixed-iothread", "allocation-depth", "bitmaps");
            arguments.CheckNoneUnexpected();
            if (type != "nbd")
            {
                throw QmpException.Generic($"Export type '{type}' is not supported");
            }

            var node = FindNode(nodeName);
            var server = Nbd ?? throw QmpException.Generic("NBD server not running");
            if (server.GetExport(id) is not null || server.Exports.Any(e => e.Id == id))
            {
                throw QmpException.Generic($"Block export id '{id}' is already in use");
            }

            server.AddExport(node, new NbdExportOptions(id, name, writable, description, writethrough));
            return ValueTask.FromResult(Empty);
        });

        Commands.Add("block-export-del", async (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            var mode = arguments.OptionalEnum("mode", "safe", "hard") ?? "safe";
            arguments.CheckNoneUnexpected();
            var export = Nbd?.GetExport(id) ?? throw QmpException.Generic($"Export '{id}' is not found");
            if (mode == "safe" && NbdServer.ClientCount(export) > 0)
            {
                throw QmpException.Generic($"export '{id}' still in use");
            }

            await DeleteExportAsync(export).ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("query-block-exports", (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            var list = new JsonArray();
            foreach (var export in Nbd?.Exports ?? [])
            {
                list.Add((JsonNode)new JsonObject
                {
                    ["type"] = "nbd",
                    ["id"] = export.Id,
                    ["node-name"] = export.Edge.Node.Name,
                    ["shutting-down"] = false,
                });
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
    }

    /// <summary>
    /// A SocketAddress: <c>{"type": "inet", "host", "port"}</c> or <c>{"type": "unix", "path"}</c>; with
    /// <paramref name="legacy"/> also nbd-server-start's older form that nests the fields in <c>data</c>.
    /// </summary>
    public static EndPoint ReadSocketAddress(QmpArguments address, bool legacy)
    {
        var type = address.OptionalEnum("type", "inet", "unix", "vsock", "fd") ?? throw QmpException.Generic($"Parameter '{address.Prefix}type' is missing");
        var fields = legacy && address.OptionalObject("data") is { } data ? data : address;
        EndPoint endPoint;
        switch (type)
        {
            case "unix":
                endPoint = new UnixDomainSocketEndPoint(fields.RequireString("path"));
                fields.Accept("abstract", "tight");
                break;
            case "inet":
            {
                var host = fields.RequireString("host");
                var port = fields.RequireString("port");
                fields.Accept("numeric", "to", "ipv4", "ipv6", "keep-alive");
                if (!int.TryParse(port, out var number) || number is < 0 or > 65535)
                {
                    throw QmpException.Generic($"Invalid port '{port}'");
                }

                var ip = host is "" or "localhost" ? IPAddress.Loopback : IPAddress.TryParse(host, out var parsed) ? parsed
                    : throw QmpException.Generic($"address resolution failed for {host}:{port}: only numeric addresses and localhost are supported");
                endPoint = new IPEndPoint(ip, number);
                break;
            }

            default:
                throw QmpException.Generic($"Socket address type '{type}' is not supported");
        }

        fields.CheckNoneUnexpected();
        if (!ReferenceEquals(fields, address))
        {
            address.CheckNoneUnexpected();
        }

        return endPoint;
    }
}
