using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Qapi;
using BlockMirror.Nbd.Server;
using BlockMirror.Net.Listening;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>nbd-server-start, nbd-server-stop, block-export-add, block-export-del, query-block-exports.</summary>
public sealed partial class StorageDaemon
{
    static readonly QapiObject NbdServerStartArguments = new("q_obj_nbd-server-start-arg",
        ("addr", BlockMirror.Nbd.SocketAddressSchema.Legacy), ("*tls-creds", QapiBuiltin.Str), ("*tls-authz", QapiBuiltin.Str), ("*max-connections", QapiBuiltin.UInt32));

    /// <summary>BlockDirtyBitmapOrStr: a bitmap's name, or a {node, name} object.</summary>
    static readonly QapiAlternate BitmapOrName = new("BlockDirtyBitmapOrStr", QapiBuiltin.Str,
        new QapiObject("BlockDirtyBitmap", ("node", QapiBuiltin.Str), ("name", QapiBuiltin.Str)));

    /// <summary>BlockExportOptions: a union on type; of its variants only nbd is implemented.</summary>
    static readonly QapiObject BlockExportOptions = QapiObject.Union("BlockExportOptions",
        [("type", QmpTypes.BlockExportType), ("id", QapiBuiltin.Str), ("*fixed-iothread", QapiBuiltin.Bool), ("*iothread", QapiBuiltin.Str),
            ("node-name", QapiBuiltin.Str), ("*writable", QapiBuiltin.Bool), ("*writethrough", QapiBuiltin.Bool)], "type",
        new QapiVariant("nbd", new QapiObject("BlockExportOptionsNbd", ("*name", QapiBuiltin.Str), ("*description", QapiBuiltin.Str),
            ("*bitmaps", new QapiArray(BitmapOrName)), ("*allocation-depth", QapiBuiltin.Bool))));

    /// <summary>
    /// BlockExportInfo, and ours after QEMU's: <c>__org.blockmirror_clients</c>, how many clients are connected
    /// to the export (what block-export-del's safe mode waits for).
    /// </summary>
    static readonly QapiObject BlockExportInfo = new("BlockExportInfo",
        ("id", QapiBuiltin.Str), ("type", QmpTypes.BlockExportType), ("node-name", QapiBuiltin.Str), ("shutting-down", QapiBuiltin.Bool),
        ("__org.blockmirror_clients", QapiBuiltin.Int));

    void AddExportCommands()
    {
        Commands.Add("nbd-server-start", NbdServerStartArguments, (arguments, _) =>
        {
            var address = arguments.OptionalObject("addr") ?? throw QmpException.Generic("Parameter 'addr' is missing");
            var endPoint = ReadSocketAddress(address, legacy: true);
            var maxConnections = arguments.OptionalUInt32("max-connections") ?? NbdServer.DefaultMaxConnections;
            var tlsCreds = arguments.OptionalString("tls-creds");
            var tlsAuthz = arguments.OptionalString("tls-authz");
            arguments.CheckNoneUnexpected();
            StartNbdServer(endPoint, tlsCreds, tlsAuthz, maxConnections: maxConnections);
            return ValueTask.FromResult(Empty);
        });

        Commands.Add("nbd-server-stop", QapiObject.Empty, async (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            if (Nbd is null)
            {
                throw QmpException.Generic("NBD server not running");
            }

            await StopNbdServerAsync().ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("block-export-add", BlockExportOptions, (arguments, _) =>
        {
            var type = arguments.RequireString("type");
            var id = arguments.RequireString("id");
            // Without an iothread (none can be created here) QEMU ignores fixed-iothread too.
            arguments.OptionalBool("fixed-iothread");
            var iothread = arguments.OptionalString("iothread");
            var nodeName = arguments.RequireString("node-name");
            var writable = arguments.OptionalBool("writable") ?? false;
            var writethrough = arguments.OptionalBool("writethrough") ?? false;
            // The nbd variant's members; the other types are refused below, after QEMU's earlier checks.
            var nbd = type == "nbd";
            var name = nbd ? arguments.OptionalString("name") : null;
            var description = nbd ? arguments.OptionalString("description") : null;
            var bitmaps = nbd ? ReadExportBitmaps(arguments) : [];
            var allocationDepth = nbd && (arguments.OptionalBool("allocation-depth") ?? false);
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

            // QEMU's blk_exp_add looks the node up by node name only, and says so.
            var node = Graph.FindNode(nodeName) ?? throw QmpException.Generic($"Cannot find device='' nor node-name='{nodeName}'");
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

            var exported = bitmaps.Select(b => FindExportBitmap(node, b.Node, b.Name, writable)).ToList();

            // writethrough: every write and write-zeroes is flushed before its reply (the NBD server adds FUA).
            server.AddExport(node, new NbdExportOptions(id, name, writable, description, writethrough, exported, allocationDepth));
            return ValueTask.FromResult(Empty);
        });

        Commands.Add("block-export-del", new QapiObject("q_obj_block-export-del-arg",
            ("id", QapiBuiltin.Str), ("*mode", new QapiEnum("BlockExportRemoveMode", ["safe", "hard"]))), async (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            var mode = arguments.OptionalString("mode") ?? "safe";
            arguments.CheckNoneUnexpected();
            var export = Nbd?.GetExport(id) ?? throw QmpException.Generic($"Export '{id}' is not found");
            if (mode == "safe" && NbdServer.ClientCount(export) > 0)
            {
                throw QmpException.Generic($"export '{id}' still in use");
            }

            await DeleteExportAsync(export).ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("query-block-exports", QapiObject.Empty, new QapiArray(BlockExportInfo), (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            var list = new JsonArray();
            // Newest first, as QEMU keeps its list.
            foreach (var export in (Nbd?.Exports ?? []).OrderByDescending(e => e.Order))
            {
                // An export being deleted is gone from the list at once (its deletion waits for nothing), so none shuts down.
                list.Add((JsonNode)new JsonObject
                {
                    ["id"] = export.Id,
                    ["type"] = "nbd",
                    ["node-name"] = export.Edge.Node.Name,
                    ["shutting-down"] = false,
                    ["__org.blockmirror_clients"] = NbdServer.ClientCount(export),
                });
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
    }

    /// <summary>
    /// The nbd variant's <c>bitmaps</c>: each a bitmap's name (looked for from the exported node down its chain) or
    /// a <c>{node, name}</c> object (BlockDirtyBitmapOrStr); on the command line <c>bitmaps.0=NAME</c> or
    /// <c>bitmaps.0.node=N,bitmaps.0.name=NAME</c>.
    /// </summary>
    static List<(string? Node, string Name)> ReadExportBitmaps(QmpArguments arguments)
    {
        var bitmaps = new List<(string?, string)>();
        foreach (var (item, label) in arguments.OptionalList("bitmaps") ?? [])
        {
            if (item.ValueKind == JsonValueKind.String)
            {
                bitmaps.Add((null, item.GetString()!));
                continue;
            }

            var external = arguments.Nested(item, label + ".");
            bitmaps.Add((external.RequireString("node"), external.RequireString("name")));
            external.CheckNoneUnexpected();
        }

        return bitmaps;
    }

    /// <summary>
    /// QEMU 7.2's checks on an exported bitmap (nbd_export_create), in its order and words. By name alone it is the
    /// first of that name from the exported node down through filters and backing files, and an enabled one on a
    /// writable node is refused for a read-only export (its contents would change under the client's feet); named
    /// with its node it is that node's, with no such check (QEMU's block_dirty_bitmap_lookup). Either way it must
    /// not be busy (exported already, or used by a job) nor inconsistent (found in use in its image).
    /// </summary>
    DirtyBitmap FindExportBitmap(BlockNode exported, string? nodeName, string name, bool writable)
    {
        DirtyBitmap? bitmap = null;
        if (nodeName is null)
        {
            foreach (var layer in BlockChain.Layers(exported))
            {
                bitmap = layer.DirtyBitmaps.FirstOrDefault(b => b.Name == name);
                if (bitmap is not null)
                {
                    if (!writable && !layer.ReadOnly && bitmap.Enabled)
                    {
                        throw QmpException.Generic($"Enabled bitmap '{name}' incompatible with readonly export");
                    }

                    break;
                }
            }

            if (bitmap is null)
            {
                throw QmpException.Generic($"Bitmap '{name}' is not found");
            }
        }
        else
        {
            var node = Graph.FindNode(nodeName) ?? throw QmpException.Generic($"Node '{nodeName}' not found");
            bitmap = node.DirtyBitmaps.FirstOrDefault(b => b.Name == name) ?? throw QmpException.Generic($"Dirty bitmap '{name}' not found");
        }

        if (bitmap.Busy)
        {
            throw QmpException.Generic($"Bitmap '{name}' is currently in use by another operation and cannot be used");
        }

        return bitmap.Inconsistent ? throw QmpException.Generic($"Bitmap '{name}' is inconsistent and cannot be used") : bitmap;
    }

    /// <summary>
    /// A SocketAddress to listen on: <c>{"type": "inet", "host", "port"}</c> (resolved as QEMU resolves a server's:
    /// <see cref="InetListenEndPoint"/>) or <c>{"type": "unix", "path"}</c>; with <paramref name="legacy"/>
    /// nbd-server-start's older form instead, which nests the fields in <c>data</c>.
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
                var numeric = fields.OptionalBool("numeric") ?? false;
                var ipv4 = fields.OptionalBool("ipv4");
                var ipv6 = fields.OptionalBool("ipv6");
                if (fields.OptionalRaw("to") is not null)
                {
                    throw QmpException.Generic($"A port range ('{fields.Prefix}to') is not supported");
                }

                // QEMU 7.2 sets keep-alive on the sockets it connects, not on those it listens with or accepts.
                fields.OptionalBool("keep-alive");
                if (fields.OptionalBool("mptcp") == true)
                {
                    throw QmpException.Generic($"Multipath TCP ('{fields.Prefix}mptcp') is not supported");
                }

                try
                {
                    endPoint = InetListenEndPoint.Resolve(host, port, ipv4, ipv6, numeric);
                }
                catch (ArgumentException ex)
                {
                    throw QmpException.Generic(ex.Message);
                }

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
