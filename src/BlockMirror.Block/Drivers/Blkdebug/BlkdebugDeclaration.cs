using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Io;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>The <c>blkdebug</c> filter's declaration (QEMU's BlockdevOptionsBlkdebug).</summary>
static class BlkdebugDeclaration
{
    static readonly QapiEnum Event = new("BlkdebugEvent", BlkdebugEventNames.All);

    static readonly QapiObject InjectErrorOptions = new("BlkdebugInjectErrorOptions",
        ("event", Event), ("*state", QapiBuiltin.Int),
        ("*iotype", new QapiEnum("BlkdebugIOType", ["read", "write", "write-zeroes", "discard", "flush", "block-status"])),
        ("*errno", QapiBuiltin.Int), ("*sector", QapiBuiltin.Int), ("*once", QapiBuiltin.Bool), ("*immediately", QapiBuiltin.Bool));

    static readonly QapiObject SetStateOptions = new("BlkdebugSetStateOptions", ("event", Event), ("*state", QapiBuiltin.Int), ("new_state", QapiBuiltin.Int));

    /// <summary>BlockdevOptionsBlkdebug without opt-write-zero, opt-discard and the child permission lists (refused as unexpected).</summary>
    public static DriverDeclaration Driver { get; } = new(DriverNames.Blkdebug, DriverKind.Filter, Read)
    {
        Options = new QapiObject("BlockdevOptionsBlkdebug",
            ("image", BlockdevSchema.Ref), ("*config", QapiBuiltin.Str), ("*align", QapiBuiltin.UInt64), ("*max-transfer", QapiBuiltin.UInt64),
            ("*max-write-zero", QapiBuiltin.UInt64), ("*max-discard", QapiBuiltin.UInt64),
            ("*inject-error", new QapiArray(InjectErrorOptions)), ("*set-state", new QapiArray(SetStateOptions))),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var image = node.Child("image");
        // QEMU's limits a blkdebug node declares (align, max-transfer, max-write-zero, max-discard): the node
        // above must pad and cut requests to them, and blkdebug fails those that break them.
        var o = node.Options;
        // Members in QAPI's order, so that the first error reported is QEMU's.
        var config = o.OptionalString("config");
        var align = Int32(o, "align");
        var maxTransfer = Int32(o, "max-transfer");
        var maxWriteZeroes = Int32(o, "max-write-zero");
        var maxDiscard = Int32(o, "max-discard");
        var inline = Rules(o, "inject-error", InjectErrorOptions, InjectError).Concat(Rules(o, "set-state", SetStateOptions, SetState)).ToList();
        return async opening =>
        {
            // As QEMU: the config file is read at open, before the image; its rules come before the inline ones.
            var texts = config is null ? inline : [.. BlkdebugConfigFile.Read(config), .. inline];
            var (injects, setStates) = BlkdebugRuleText.Resolve(texts);
            var options = new BlkdebugOptions(null, align, maxTransfer, maxWriteZeroes, maxDiscard, injects, setStates);
            var child = await opening.OpenChildAsync(image).ConfigureAwait(false);
            return await BlkdebugFilter.OpenAsync(opening.Graph, node.NodeName, child, options, node.ReadOnly, opening.CancellationToken).ConfigureAwait(false);
        };
    }

    /// <summary>A size QAPI types as int32 (0 when absent); a larger one is refused as QEMU's visitor refuses it.</summary>
    static int Int32(OptionReader options, string name) => options.OptionalUnsigned(name) switch
    {
        null => 0,
        <= int.MaxValue and var value => (int)value,
        _ => throw options.Invalid($"Parameter '{options.Prefix}{name}' expects int32"),
    };

    /// <summary>
    /// A list of rules (<c>inject-error</c>, <c>set-state</c>) as QAPI reads it: JSON arrays, or on the command
    /// line <c>inject-error.0.event=...</c>, and members named as QEMU names them in errors.
    /// </summary>
    static List<BlkdebugRuleText> Rules(OptionReader options, string name, QapiObject itemType, Func<OptionReader, BlkdebugRuleText> read) =>
        [.. (options.OptionalList(name) ?? []).Select(entry => Rule(options.Nested(entry.Item, entry.Label + ".", itemType), read))];

    static BlkdebugRuleText Rule(OptionReader item, Func<OptionReader, BlkdebugRuleText> read)
    {
        var rule = read(item);
        item.CheckNoneUnexpected();
        return rule;
    }

    /// <summary>BlkdebugInjectErrorOptions. QEMU names the enum members without their list prefix when refusing a value.</summary>
    static BlkdebugRuleText InjectError(OptionReader rule) => new(
        IsSetState: false,
        Event: EventName(rule),
        State: (int)(rule.OptionalInt("state") ?? 0),
        IoType: IoType(rule),
        Errno: (int)(rule.OptionalInt("errno") ?? (long)BlockErrno.EIO),
        Sector: rule.OptionalInt("sector") ?? -1,
        Once: rule.OptionalBool("once") ?? false,
        Immediately: rule.OptionalBool("immediately") ?? false,
        NewState: 0);

    /// <summary>BlkdebugSetStateOptions: <c>new_state</c> is required.</summary>
    static BlkdebugRuleText SetState(OptionReader rule) => new(
        IsSetState: true,
        Event: EventName(rule),
        State: (int)(rule.OptionalInt("state") ?? 0),
        IoType: null, Errno: 0, Sector: -1, Once: false, Immediately: false,
        NewState: (int)rule.RequireInt("new_state"));

    static string? IoType(OptionReader rule)
    {
        var name = rule.OptionalString("iotype");
        return name is null || (BlockOperationNames.TryParse(name, out var operation) && BlkdebugInjectError.IsIoType(operation))
            ? name
            : throw rule.Invalid($"Parameter 'iotype' does not accept value '{name}'");
    }

    static string EventName(OptionReader rule)
    {
        var name = rule.RequireString("event");
        return BlkdebugEventNames.TryParse(name, out _) ? name : throw rule.Invalid($"Parameter 'event' does not accept value '{name}'");
    }
}
