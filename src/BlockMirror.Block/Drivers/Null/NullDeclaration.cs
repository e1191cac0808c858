using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Null;

/// <summary>The <c>null-co</c> driver's declaration (QEMU's BlockdevOptionsNull).</summary>
static class NullDeclaration
{
    public static DriverDeclaration Driver { get; } = new(DriverNames.NullCo, DriverKind.Protocol, Read)
    {
        Options = new QapiObject("BlockdevOptionsNull", ("*size", QapiBuiltin.Int), ("*latency-ns", QapiBuiltin.UInt64), ("*read-zeroes", QapiBuiltin.Bool)),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var options = new NullDriverOptions(node.Options.OptionalOptsSize("size") ?? NullDriverOptions.DefaultSize,
            node.Options.OptionalBool("read-zeroes") ?? false, node.Options.OptionalUnsigned("latency-ns") ?? 0);
        return opening => NullDriver.OpenAsync(opening.Graph, node.NodeName, options, node.ReadOnly, opening.CancellationToken);
    }
}
