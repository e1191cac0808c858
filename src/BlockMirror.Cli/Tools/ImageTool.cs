using System.CommandLine;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;

namespace BlockMirror.Cli.Tools;

/// <summary>What the qemu-img-like commands share: opening an image by name, naming its backing files, warnings.</summary>
static class ImageTool
{
    /// <summary>
    /// The format to open <paramref name="path"/> with: the one given, else what its content says (qemu-img
    /// probes, it does not look at the extension). Null for an image that is not a local file (an NBD
    /// export): it is probed through its node when it opens.
    /// </summary>
    public static string? FormatOf(string path, string? format) => format ?? (ImageFiles.LocalFile(path) is { } file ? ImageFiles.Probe(file) : null);

    /// <summary>
    /// Opens an image read-only (or for writing) with its backing chain, or alone when
    /// <paramref name="withBacking"/> is false (as <c>qemu-img info</c> opens each image of a chain by itself,
    /// so that a missing backing file does not hide the overlay's information). <paramref name="forceShare"/> is
    /// qemu-img's <c>-U</c>: open it although another process writes it.
    /// </summary>
    public static async Task<BlockNode> OpenAsync(BlockGraph graph, string path, string? format, bool readOnly, bool withBacking, CancellationToken cancellationToken,
        bool forceShare = false)
    {
        var options = new ImageOpenOptions(path, FormatOf(path, format), ReadOnly: readOnly,
            Qcow2: withBacking ? null : new Qcow2Options { Backing = Qcow2BackingMode.None }, ForceShare: forceShare);
        return await OpenAsync(graph, options, cancellationToken);
    }

    /// <summary>
    /// Opens an image by name for a command. An image that is not a local file (<c>nbd://...</c>) gets
    /// qemu-img's words for every refusal, <c>Could not open 'NAME': REASON</c>: a bad URI, an unknown prefix,
    /// a server that does not answer, a format or backing file that cannot be opened. (A file's refusals are
    /// worded where they arise, as file-posix and qcow2 word them.)
    /// </summary>
    public static async Task<BlockNode> OpenAsync(BlockGraph graph, ImageOpenOptions options, CancellationToken cancellationToken)
    {
        if (ImageFiles.LocalFile(options.Path) is not null)
        {
            return await ImageFiles.OpenAsync(graph, options, cancellationToken);
        }

        var prefix = $"Could not open '{options.Path}': ";
        try
        {
            return await ImageFiles.OpenAsync(graph, options, cancellationToken);
        }
        catch (BlockOpenException ex) when (!ex.Message.StartsWith(prefix, StringComparison.Ordinal))
        {
            throw new BlockOpenException(prefix + ex.Message, ex.Errno, ex);
        }
    }

    /// <summary>
    /// The name qemu-img shows for an image opened as <paramref name="path"/>: a file's name as given (without
    /// a <c>file:</c> prefix); for another protocol's image the name its node has (an NBD export's:
    /// <c>nbd://HOST:PORT/EXPORT</c> or <c>nbd+unix:///EXPORT?socket=PATH</c>, whichever form was given).
    /// </summary>
    public static string DisplayName(string path, BlockNode image) =>
        ImageFiles.LocalFile(path) ?? image.File?.Node.Driver.FileName ?? path;

    /// <summary>qemu-img's <c>-U</c> for the read-only commands.</summary>
    public static Option<bool> ForceShareOption() =>
        new("--force-share", "-U") { Description = "Open the image even while another process writes it (it may then read inconsistent data)" };

    /// <summary>
    /// Takes, on a file node a command reads (and maybe repairs) as a format's file, what a format node
    /// would take on it: reads, and writes when repairing, with nobody else writing or resizing it unless
    /// <paramref name="forceShare"/>. Refused with qemu-img's lock message while another process writes it.
    /// </summary>
    public static NodeEdge UseAsFormatFile(BlockGraph graph, BlockNode file, string path, bool readOnly, bool forceShare)
    {
        var takes = BlockPermissions.ConsistentRead | (readOnly ? BlockPermissions.None : BlockPermissions.Write | BlockPermissions.Resize);
        var shares = forceShare ? BlockPermissions.All : BlockPermissions.ConsistentRead | BlockPermissions.WriteUnchanged;
        try
        {
            return graph.AttachRoot(file, new RootParent("qemu-img"), "root", takes, shares);
        }
        catch (BlockGraphException ex) when (ex.Hint is not null)
        {
            throw new BlockGraphException(ex.Kind, $"Could not open '{path}': {ex.Message}") { Hint = ex.Hint };
        }
    }

    /// <summary>
    /// The chain below <paramref name="top"/> with the names qemu-img shows for each layer: the top under
    /// <paramref name="topName"/>, each backing image under its overlay's name combined with the backing file
    /// name in the overlay's header.
    /// </summary>
    public static IReadOnlyList<(BlockNode Node, string Name)> NamedLayers(BlockNode top, string topName)
    {
        var layers = new List<(BlockNode, string)>();
        var name = topName;
        for (var node = top; node is not null; node = node.ChainChild)
        {
            layers.Add((node, name));
            name = node.Driver.BackingFileName is { } backing ? BackingPaths.Resolve(name, backing) : node.ChainChild?.Driver.FileName ?? "";
        }

        return layers;
    }

    /// <summary>Prints what the block layer found worth telling (e.g. an image marked corrupt) for every layer of the chain.</summary>
    public static void PrintWarnings(string command, BlockNode top)
    {
        foreach (var node in BlockChain.Layers(top))
        {
            if (node.Driver is IImageWarnings image)
            {
                foreach (var warning in image.Warnings)
                {
                    Console.Error.WriteLine($"blockmirror {command}: warning: {warning}");
                }
            }
        }
    }

    /// <summary>Parses <c>--output</c>: <c>human</c> (the default) or <c>json</c>.</summary>
    public static bool IsJson(string? output) => output switch
    {
        null or "human" => false,
        "json" => true,
        _ => throw new Commands.UsageException($"--output: unknown output format '{output}' (expected human or json)"),
    };
}
