using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Memory;

/// <summary>The <c>memory</c> driver's declaration: not QEMU's, so only code opens it (warm-up runs, tests).</summary>
static class MemoryDeclaration
{
    public static DriverDeclaration Driver { get; } = new(DriverNames.Memory, DriverKind.Protocol, Read)
    {
        Offered = false,
        Options = new QapiObject("BlockdevOptionsMemory", ("size", QapiBuiltin.UInt64), ("*zero-init", QapiBuiltin.Bool)),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var options = new MemoryDriverOptions(node.Options.OptionalUnsigned("size") ?? throw node.Options.Invalid("Parameter 'size' is missing"),
            node.Options.OptionalBool("zero-init") ?? true);
        return opening => MemoryDriver.OpenAsync(opening.Graph, node.NodeName, options, node.ReadOnly, opening.CancellationToken);
    }
}
