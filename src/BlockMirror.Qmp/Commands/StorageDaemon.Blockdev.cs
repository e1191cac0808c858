using System.Text.Json.Nodes;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Commands;

/// <summary>blockdev-add, blockdev-del, query-named-block-nodes, query-block.</summary>
public sealed partial class StorageDaemon
{
    void AddBlockdevCommands()
    {
        // Boxed, as QEMU's: the arguments are a BlockdevOptions, whose variants are the drivers' declarations.
        Commands.Add("blockdev-add", BlockdevSchema.Options, async (arguments, cancellationToken) =>
        {
            await DriverRegistry.OpenAsync(Graph, arguments, OpenRules.BlockdevAdd, cancellationToken).ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("blockdev-del", new QapiObject("q_obj_blockdev-del-arg", ("node-name", QapiBuiltin.Str)), async (arguments, _) =>
        {
            var name = arguments.RequireString("node-name");
            arguments.CheckNoneUnexpected();
            var node = Graph.FindNode(name) ?? throw Protocol.QmpException.Generic($"Failed to find node with node-name='{name}'");

            // QEMU 7.2's order and words: a user that is no node (an export, a job) first, then ownership,
            // then a node above it.
            if (node.Parents.Any(e => e.IsRoot))
            {
                throw Protocol.QmpException.Generic($"Node {name} is in use");
            }

            if (node.IsAutoNamed)
            {
                throw Protocol.QmpException.Generic($"Node {name} is not owned by the monitor");
            }

            if (node.Parents.Count > 0)
            {
                throw Protocol.QmpException.Generic($"Block device {name} is in use");
            }

            await Graph.RemoveNodeAsync(node).ConfigureAwait(false);
            return Empty;
        });

        // QEMU lists the BlockBackends a user named (a guest's drives, -drive). A storage daemon has none: its
        // nodes are reached by node name, and the backends of its exports and jobs are anonymous. So the list is
        // empty whatever the graph holds, as qemu-storage-daemon 7.2's is (the differential test has nodes and
        // an export); query-named-block-nodes describes the nodes.
        Commands.Add("query-block", QapiObject.Empty, new QapiArray(QmpTypes.BlockInfo), (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            return ValueTask.FromResult<JsonNode?>(new JsonArray());
        });

        Commands.Add("query-named-block-nodes", new QapiObject("q_obj_query-named-block-nodes-arg", ("*flat", QapiBuiltin.Bool)),
            new QapiArray(QmpTypes.BlockDeviceInfo), (arguments, _) =>
        {
            // flat=false would add each node's backing chain under "backing-image"; nodes here are
            // described without it, which is what flat=true asks for.
            if (arguments.OptionalBool("flat") == false)
            {
                throw Protocol.QmpException.Generic("Describing backing chains ('flat': false) is not supported");
            }
            arguments.CheckNoneUnexpected();
            var list = new JsonArray();
            foreach (var node in Graph.Nodes)
            {
                list.Add((JsonNode)DescribeNode(node));
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
    }

    /// <summary>A BlockDeviceInfo, with the members scripts look at.</summary>
    static JsonObject DescribeNode(BlockNode node)
    {
        var info = new JsonObject
        {
            ["node-name"] = node.Name,
            ["drv"] = node.Driver.DriverName,
            ["ro"] = node.ReadOnly,
            ["file"] = node.Driver.FileName ?? "",
            ["encrypted"] = false,
            ["detect_zeroes"] = node.DetectZeroes switch
            {
                DetectZeroesMode.On => "on",
                DetectZeroesMode.Unmap => "unmap",
                _ => "off",
            },
            ["bps"] = 0, ["bps_rd"] = 0, ["bps_wr"] = 0, ["iops"] = 0, ["iops_rd"] = 0, ["iops_wr"] = 0,
            // QAPI types it as int: a threshold past INT64_MAX prints negative, as in QEMU.
            ["write_threshold"] = (long)node.WriteThreshold,
            ["backing_file_depth"] = Depth(node),
            // writeback is a property of the device above (always true for a node, as in QEMU); no-flush is
            // accepted and not acted on: flushes always reach the file.
            ["cache"] = new JsonObject { ["writeback"] = true, ["direct"] = node.Direct, ["no-flush"] = false },
            ["image"] = new JsonObject
            {
                ["filename"] = node.Driver.FileName ?? "",
                ["format"] = node.Driver.DriverName,
                ["virtual-size"] = node.Length,
                ["dirty-flag"] = false,
            },
        };
        if (node.Backing is { } backing)
        {
            info["backing_file"] = backing.Driver.FileName ?? backing.Name;
        }

        if (DescribeBitmaps(node) is { } bitmaps)
        {
            info["dirty-bitmaps"] = bitmaps;
        }

        return info;
    }

    static int Depth(BlockNode node)
    {
        var depth = 0;
        for (var b = node.Backing; b is not null; b = b.Backing)
        {
            depth++;
        }

        return depth;
    }
}
