using System.Text.Json.Nodes;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Qapi;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// block-dirty-bitmap-add, -remove, -clear, -enable, -disable and -merge (QEMU 7.2's block/monitor/bitmap-qmp-cmds.c),
/// and the BlockDirtyInfo list query-named-block-nodes shows. Each command is the transaction action of the same
/// name run alone (prepared, then committed), so a command and an action check the same things in the same order.
/// </summary>
public sealed partial class StorageDaemon
{
    /// <summary>
    /// The QAPI types of the bitmap commands and of transaction. A class of their own, first used by the constructor:
    /// they are made of <see cref="BitmapOrName"/>, a field of another part of this class, which a field initialiser
    /// here could otherwise read before it is set (the order of initialisers across partial files is not defined).
    /// </summary>
    static class BitmapSchema
    {
        /// <summary>BlockDirtyBitmap: a bitmap of a node, by name.</summary>
        public static readonly QapiObject BlockDirtyBitmap = BitmapOrName.ObjectBranch!;

        public static readonly QapiObject Add = new("BlockDirtyBitmapAdd",
            ("node", QapiBuiltin.Str), ("name", QapiBuiltin.Str), ("*granularity", QapiBuiltin.UInt32), ("*persistent", QapiBuiltin.Bool),
            ("*disabled", QapiBuiltin.Bool));

        public static readonly QapiObject Merge = new("BlockDirtyBitmapMerge",
            ("node", QapiBuiltin.Str), ("target", QapiBuiltin.Str), ("bitmaps", new QapiArray(BitmapOrName)));

        /// <summary>The six bitmap actions: each a command and a transaction action of that name, with its arguments.</summary>
        public static readonly (string Name, QapiObject Arguments)[] Actions =
        [
            ("block-dirty-bitmap-add", Add),
            ("block-dirty-bitmap-remove", BlockDirtyBitmap),
            ("block-dirty-bitmap-clear", BlockDirtyBitmap),
            ("block-dirty-bitmap-enable", BlockDirtyBitmap),
            ("block-dirty-bitmap-disable", BlockDirtyBitmap),
            ("block-dirty-bitmap-merge", Merge),
        ];

        /// <summary>TransactionActionKind: QEMU 7.2's list; <see cref="TransactionAction"/> has variants for the kinds accepted here only.</summary>
        static readonly QapiEnum TransactionActionKind = new("TransactionActionKind",
        [
            "abort", "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear", "block-dirty-bitmap-enable",
            "block-dirty-bitmap-disable", "block-dirty-bitmap-merge", "blockdev-backup", "blockdev-snapshot", "blockdev-snapshot-internal-sync",
            "blockdev-snapshot-sync", "drive-backup",
        ]);

        // QEMU's wrappers: one per argument type (remove, clear, enable and disable share BlockDirtyBitmapWrapper).
        static readonly QapiObject[] Wrappers = [.. new[] { Add, BlockDirtyBitmap, Merge }.Select(a => new QapiObject(a.Name + "Wrapper", ("data", a)))];

        /// <summary>TransactionAction: a union on type, each variant a wrapper whose <c>data</c> is the action's arguments.</summary>
        public static readonly QapiObject TransactionAction = QapiObject.Union("TransactionAction", [("type", TransactionActionKind)], "type",
        [
            new QapiVariant("abort", new QapiObject("AbortWrapper", ("data", new QapiObject("Abort")))),
            .. Actions.Select(a => new QapiVariant(a.Name, Wrappers.Single(w => ReferenceEquals(w.Members[0].Type, a.Arguments)))),
        ]);

        public static readonly QapiObject TransactionArguments = new("q_obj_transaction-arg", ("actions", new QapiArray(TransactionAction)),
            ("*properties", new QapiObject("TransactionProperties", ("*completion-mode", new QapiEnum("ActionCompletionMode", ["individual", "grouped"])))));
    }

    /// <summary>The checks QEMU's bdrv_dirty_bitmap_check makes, as flags (BDRV_BITMAP_*).</summary>
    [Flags]
    enum BitmapCheck
    {
        Busy = 1,
        ReadOnly = 2,
        Inconsistent = 4,
        Default = Busy | ReadOnly | Inconsistent,
        AllowReadOnly = Busy | Inconsistent,
    }

    void AddBitmapCommands()
    {
        foreach (var (name, arguments) in BitmapSchema.Actions)
        {
            Commands.Add(name, arguments, async (reader, cancellationToken) =>
            {
                var action = ReadBitmapAction(name, reader, grouped: false);
                await RunActionsAsync([action], cancellationToken).ConfigureAwait(false);
                return Empty;
            });
        }
    }

    /// <summary>Reads one bitmap action's arguments (all of them, before anything is prepared).</summary>
    TransactionAction ReadBitmapAction(string kind, QmpArguments arguments, bool grouped)
    {
        TransactionAction action = kind switch
        {
            "block-dirty-bitmap-add" => new AddBitmapAction(this, arguments.RequireString("node"), arguments.RequireString("name"),
                arguments.OptionalUInt32("granularity"), arguments.OptionalBool("persistent") ?? false, arguments.OptionalBool("disabled") ?? false),
            "block-dirty-bitmap-merge" => new MergeBitmapAction(this, arguments.RequireString("node"), arguments.RequireString("target"),
                [.. arguments.OptionalList("bitmaps")!.Select(item => ReadBitmapSource(arguments, item.Item, item.Label))]),
            _ => ReadNamedBitmapAction(kind, arguments.RequireString("node"), arguments.RequireString("name")),
        };
        arguments.CheckNoneUnexpected();
        action.Kind = kind;
        action.Grouped = grouped;
        return action;
    }

    TransactionAction ReadNamedBitmapAction(string kind, string node, string name) => kind switch
    {
        "block-dirty-bitmap-remove" => new RemoveBitmapAction(this, node, name),
        "block-dirty-bitmap-clear" => new ClearBitmapAction(this, node, name),
        "block-dirty-bitmap-enable" => new EnableBitmapAction(this, node, name, enable: true),
        "block-dirty-bitmap-disable" => new EnableBitmapAction(this, node, name, enable: false),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not a bitmap action"),
    };

    /// <summary>A BlockDirtyBitmapOrStr: a name (a bitmap of the target's node) or a {node, name} object.</summary>
    static (string? Node, string Name) ReadBitmapSource(QmpArguments arguments, System.Text.Json.JsonElement item, string label)
    {
        if (item.ValueKind == System.Text.Json.JsonValueKind.String)
        {
            return (null, item.GetString()!);
        }

        var source = arguments.Nested(item, label + ".", BitmapSchema.BlockDirtyBitmap);
        var result = (source.RequireString("node"), source.RequireString("name"));
        source.CheckNoneUnexpected();
        return result;
    }

    /// <summary>QEMU's block_dirty_bitmap_lookup: the node, then the bitmap on it, each refused in QEMU's words.</summary>
    (BlockNode Node, DirtyBitmap Bitmap) LookupBitmap(string node, string name)
    {
        var found = Graph.FindNode(node) ?? throw QmpException.Generic($"Node '{node}' not found");
        return (found, FindBitmap(found, name) ?? throw QmpException.Generic($"Dirty bitmap '{name}' not found"));
    }

    static DirtyBitmap? FindBitmap(BlockNode node, string name) => node.DirtyBitmaps.FirstOrDefault(b => b.Name == name);

    /// <summary>QEMU's bdrv_dirty_bitmap_check: refuses a bitmap that is busy, read-only or inconsistent, as <paramref name="checks"/> asks.</summary>
    static void CheckBitmap(DirtyBitmap bitmap, BitmapCheck checks)
    {
        if (checks.HasFlag(BitmapCheck.Busy) && bitmap.Busy)
        {
            throw QmpException.Generic($"Bitmap '{bitmap.Name}' is currently in use by another operation and cannot be used");
        }

        if (checks.HasFlag(BitmapCheck.ReadOnly) && bitmap.ReadOnly)
        {
            throw QmpException.Generic($"Bitmap '{bitmap.Name}' is readonly and cannot be modified");
        }

        if (checks.HasFlag(BitmapCheck.Inconsistent) && bitmap.Inconsistent)
        {
            throw QmpException.Generic($"Bitmap '{bitmap.Name}' is inconsistent and cannot be used");
        }
    }

    /// <summary>A node's bitmaps as QEMU 7.2 lists them (newest first, anonymous ones such as a mirror's too); null when it has none.</summary>
    static JsonArray? DescribeBitmaps(BlockNode node)
    {
        var bitmaps = node.DirtyBitmaps;
        if (bitmaps.Count == 0)
        {
            return null;
        }

        var list = new JsonArray();
        for (var i = bitmaps.Count - 1; i >= 0; i--)
        {
            var bitmap = bitmaps[i];
            var info = new JsonObject();
            if (bitmap.Name is { } name)
            {
                info["name"] = name;
            }

            info["count"] = bitmap.DirtyChunkBytes;
            info["granularity"] = bitmap.Granularity;
            info["recording"] = bitmap.Enabled;
            info["busy"] = bitmap.Busy;
            info["persistent"] = bitmap.Persistent;
            if (bitmap.Inconsistent)
            {
                info["inconsistent"] = true;
            }

            list.Add((JsonNode)info);
        }

        return list;
    }
}
