using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.File;

/// <summary>The <c>file</c> protocol driver's declaration (QEMU's BlockdevOptionsFile).</summary>
static class FileDeclaration
{
    public static DriverDeclaration Driver { get; } = new(DriverNames.File, DriverKind.Protocol, Read)
    {
        // file:PATH names PATH (QEMU's raw_parse_filename): the way to open a file whose name has a ':'.
        Protocols = ["file"],
        ParseFileName = (fileName, options) => options.WriteString("filename", fileName["file:".Length..]),
        Options = new QapiObject("BlockdevOptionsFile",
            ("filename", QapiBuiltin.Str),
            ("*locking", new QapiEnum("OnOffAuto", ["auto", "on", "off"])),
            ("*aio", new QapiEnum("BlockdevAioOptions", FileDriverOptions.AioModes)),
            ("*drop-cache", QapiBuiltin.Bool),
            ("*x-check-cache-dropped", QapiBuiltin.Bool)),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var options = new FileDriverOptions(node.Options.RequireString("filename"), node.Direct,
            node.Options.OptionalEnum("aio", "threads", "native", "io_uring"), node.Discard,
            node.Options.OptionalEnum("locking", "auto", "on", "off") switch
            {
                "on" => FileLockingMode.On,
                "off" => FileLockingMode.Off,
                _ => FileLockingMode.Auto,
            });
        // Accepted so that QEMU's scripts run unchanged; this driver does not act on them.
        node.Options.Accept("drop-cache", "x-check-cache-dropped");
        return opening => FileDriver.OpenAsync(opening.Graph, node.NodeName, options, node.ReadOnly, opening.CancellationToken);
    }
}
