using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// block-set-write-threshold and its BLOCK_WRITE_THRESHOLD event (QEMU 7.2's block/write-threshold.c): a
/// manager of thin-provisioned storage is told once when writes reach past a byte offset of a node.
/// </summary>
public sealed partial class StorageDaemon
{
    // QAPI's uint64, declared as Size: the declared reader checks Size as QEMU checks uint64 (-1 is 2^64-1), and
    // introspection names both int.
    static readonly QapiObject WriteThresholdArguments = new("q_obj_block-set-write-threshold-arg",
        ("node-name", QapiBuiltin.Str), ("write-threshold", QapiBuiltin.Size));

    void AddWriteThresholdCommand()
    {
        Graph.WriteThresholdExceeded += e => Raise("BLOCK_WRITE_THRESHOLD", new JsonObject
        {
            ["node-name"] = e.NodeName,
            ["amount-exceeded"] = e.AmountExceeded,
            ["write-threshold"] = e.Threshold,
        });

        Commands.Add("block-set-write-threshold", WriteThresholdArguments, (arguments, _) =>
        {
            var nodeName = arguments.RequireString("node-name");
            // QAPI's uint64: a negative number is taken as its two's complement, as QEMU takes it.
            var threshold = arguments.OptionalUInt64("write-threshold") ?? throw QmpException.Generic("Parameter 'write-threshold' is missing");
            arguments.CheckNoneUnexpected();
            var node = Graph.FindNode(nodeName) ?? throw QmpException.Generic($"Device '{nodeName}' not found");
            // 0 turns the threshold off.
            node.WriteThreshold = threshold;
            return ValueTask.FromResult(Empty);
        });
    }
}
