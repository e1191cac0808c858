using System.Text.Json;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>The <c>blkdebug</c> filter's declaration (QEMU's BlockdevOptionsBlkdebug).</summary>
static class BlkdebugDeclaration
{
    public static DriverDeclaration Driver { get; } = new(DriverNames.Blkdebug, DriverKind.Filter, Read);

    static NodeOpener Read(NodeOptions node)
    {
        var image = node.Child("image");
        // QEMU's limits a blkdebug node declares (align, max-transfer, max-write-zero, max-discard): the node
        // above must pad and cut requests to them, and blkdebug fails those that break them.
        var o = node.Options;
        var options = new BlkdebugOptions(Rules(o), Int32(o, "align"), Int32(o, "max-transfer"), Int32(o, "max-write-zero"), Int32(o, "max-discard"));
        return async opening =>
        {
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

    /// <summary><c>inject-error</c>: a list of event (read_aio, write_aio, flush_to_disk...), errno, sector, once, immediately.</summary>
    static List<BlkdebugRule>? Rules(OptionReader options)
    {
        if (options.OptionalRaw("inject-error") is not { } list)
        {
            return null;
        }

        if (list.ValueKind != JsonValueKind.Array)
        {
            throw options.Invalid($"Invalid parameter type for '{options.Prefix}inject-error', expected: array");
        }

        var rules = new List<BlkdebugRule>();
        var index = 0;
        foreach (var item in list.EnumerateArray())
        {
            var rule = options.Nested(item, $"{options.Prefix}inject-error[{index++}].");
            var operation = rule.OptionalString("event") switch
            {
                null => throw options.Invalid($"Parameter '{options.Prefix}inject-error[{index - 1}].event' is missing"),
                "read_aio" => BlockOperation.Read,
                "write_aio" => BlockOperation.Write,
                "flush_to_disk" => BlockOperation.Flush,
                "pwrite_zeroes" => BlockOperation.WriteZeroes,
                "pdiscard" => BlockOperation.Discard,
                var other => throw options.Invalid($"Parameter '{options.Prefix}inject-error[{index - 1}].event' does not accept value '{other}'"),
            };
            var errno = (BlockErrno)(rule.OptionalInt("errno") ?? (long)BlockErrno.EIO);
            var sector = rule.OptionalInt("sector");
            var once = rule.OptionalBool("once") ?? false;
            rule.Accept("state", "iotype", "immediately");
            rule.CheckNoneUnexpected();
            rules.Add(new BlkdebugRule(operation, sector is { } s and >= 0 ? s * 512 : 0, sector is >= 0 ? 512 : null, errno, 0, once));
        }

        return rules;
    }
}
