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
            if (arguments.OptionalUInt32("max-connections") is not (null or 0))
            {
                // The NBD server takes any number of clients; a limit it would not enforce is refused.
                throw QmpException.Generic("Limiting NBD clients ('max-connections') is not supported");
            }

            var tlsCreds = arguments.OptionalString("tls-creds");
            var tlsAuthz = arguments.OptionalString("tls-authz");
            arguments.CheckNoneUnexpected();
            StartNbdServer(endPoint, tlsCreds, tlsAuthz);
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
            // Without an iothread (none can be created here) QEMU ignores fixed-iothread too.
            arguments.OptionalBool("fixed-iothread");
            var iothread = arguments.OptionalString("iothread");
            var nodeName = arguments.RequireString("node-name");
            var writable = arguments.OptionalBool("writable") ?? false;
            var writethrough = arguments.OptionalBool("writethrough") ?? false;
            var name = arguments.OptionalString("name");
            var description = arguments.OptionalString("description");
            var bitmaps = CountBitmaps(arguments);
            var allocationDepth = arguments.OptionalBool("allocation-depth") ?? false;
            arguments.CheckNoneUnexpected();

            // QEMU's order: the id, the export type, the node, the iothread, then the NBD server's checks.
            if (Nbd?.Exports.Any(e => e.Id == id) == true)
            {
                throw QmpException.Generic($"Block export id '{id}' is already in use");
            }

            if (type != "nbd")
            {
                throw QmpException.Generic($"Export type '{type}' is not supported");
            }

            var node = FindNode(nodeName);
            if (iothread is not null)
            {
                throw QmpException.Generic($"iothread \"{iothread}\" not found");
            }

            var server = Nbd ?? throw QmpException.Generic("NBD server not running");
            var exportName = name ?? nodeName;
            if (server.Exports.Any(e => e.Name == exportName))
            {
                throw QmpException.Generic($"NBD server already has export named '{exportName}'");
            }

            // Refused by name until they are implemented, rather than accepted and ignored.
            if (bitmaps > 0)
            {
                throw QmpException.Generic("Exporting dirty bitmaps ('bitmaps') is not supported");
            }

            if (allocationDepth)
            {
                throw QmpException.Generic("Exporting the allocation depth ('allocation-depth', qemu:allocation-depth) is not supported");
            }

            // writethrough: every write and write-zeroes is flushed before its reply (the NBD server adds FUA).
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
    /// block-export-add's <c>bitmaps</c>: a list whose items are a bitmap's name or a {node, name} object
    /// (QAPI's BlockDirtyBitmapOrStr, with QEMU's odd "'null'" in the error). Returns how many are given.
    /// </summary>
    static int CountBitmaps(QmpArguments arguments)
    {
        if (arguments.OptionalRaw("bitmaps") is not { } value)
        {
            return 0;
        }

        if (value.ValueKind != System.Text.Json.JsonValueKind.Array)
        {
            throw QmpException.Generic("Invalid parameter type for 'bitmaps', expected: array");
        }

        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind is not (System.Text.Json.JsonValueKind.String or System.Text.Json.JsonValueKind.Object))
            {
                throw QmpException.Generic("Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr");
            }
        }

        return value.GetArrayLength();
    }

    /// <summary>
    /// A SocketAddress: <c>{"type": "inet", "host", "port"}</c> or <c>{"type": "unix", "path"}</c>; with
    /// <paramref name="legacy"/> nbd-server-start's older form instead, which nests the fields in <c>data</c>.
    /// </summary>
    public static EndPoint ReadSocketAddress(QmpArguments address, bool legacy)
    {
        var type = address.OptionalEnum("type", "inet", "unix", "vsock", "fd") ?? throw QmpException.Generic($"Parameter '{address.Prefix}type' is missing");
        // nbd-server-start takes only the legacy form (SocketAddressLegacy), as QEMU 7.2 does.
        var fields = legacy ? address.OptionalObject("data") ?? throw QmpException.Generic($"Parameter '{address.Prefix}data' is missing") : address;
        EndPoint endPoint;
        switch (type)
        {
            case "unix":
                endPoint = new UnixDomainSocketEndPoint(fields.RequireString("path"));
                // tight only matters for an abstract socket, which is refused.
                fields.OptionalBool("tight");
                if (fields.OptionalBool("abstract") == true)
                {
                    throw QmpException.Generic($"Abstract Unix sockets ('{fields.Prefix}abstract') are not supported");
                }

                break;
            case "inet":
            {
                var host = fields.RequireString("host");
                var port = fields.RequireString("port");
                // Host names are never resolved here, so numeric=on changes nothing.
                fields.OptionalBool("numeric");
                var ipv4 = fields.OptionalBool("ipv4");
                var ipv6 = fields.OptionalBool("ipv6");
                if (fields.OptionalRaw("to") is not null)
                {
                    throw QmpException.Generic($"A port range ('{fields.Prefix}to') is not supported");
                }

                if (fields.OptionalBool("keep-alive") == true)
                {
                    throw QmpException.Generic($"TCP keep-alive ('{fields.Prefix}keep-alive') is not supported");
                }
                if (!int.TryParse(port, out var number) || number is < 0 or > 65535)
                {
                    throw QmpException.Generic($"Invalid port '{port}'");
                }

                var ip = host is "" or "localhost" ? IPAddress.Loopback : IPAddress.TryParse(host, out var parsed) ? parsed
                    : throw QmpException.Generic($"address resolution failed for {host}:{port}: only numeric addresses and localhost are supported");
                if ((ip.AddressFamily == AddressFamily.InterNetwork ? ipv4 : ipv6) == false)
                {
                    throw QmpException.Generic($"The address {host} is excluded by '{fields.Prefix}{(ip.AddressFamily == AddressFamily.InterNetwork ? "ipv4" : "ipv6")}'");
                }

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
