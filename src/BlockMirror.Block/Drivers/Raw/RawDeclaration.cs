using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Raw;

/// <summary>The <c>raw</c> format's declaration (QEMU's BlockdevOptionsRaw).</summary>
static class RawDeclaration
{
    public static DriverDeclaration Driver { get; } = new(DriverNames.Raw, DriverKind.Format, Read)
    {
        Options = new QapiObject("BlockdevOptionsRaw", ("file", BlockdevSchema.Ref), ("*offset", QapiBuiltin.Int), ("*size", QapiBuiltin.Int)),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var file = node.Child("file");
        var options = new RawDriverOptions(node.Options.OptionalOptsSize("offset") ?? 0, node.Options.OptionalOptsSize("size"), node.Rules.ProbedFormat,
            node.Discard == File.FileDiscardMode.Unmap);
        return async opening =>
        {
            var child = await opening.OpenChildAsync(file).ConfigureAwait(false);
            return await RawDriver.OpenAsync(opening.Graph, node.NodeName, child, options, node.ReadOnly, opening.CancellationToken).ConfigureAwait(false);
        };
    }
}
