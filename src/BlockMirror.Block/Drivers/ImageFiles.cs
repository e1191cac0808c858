using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers;

/// <summary>Options for opening an image file as a format node over a file node.</summary>
/// <param name="Path">The image file.</param>
/// <param name="Format">Format name; null picks it from the extension (<c>.qcow2</c>, else raw).</param>
/// <param name="ReadOnly">Open both nodes read-only.</param>
/// <param name="Direct">O_DIRECT on the file node (<c>cache.direct</c>).</param>
/// <param name="Discard">Let discards and may-unmap zeroing punch holes.</param>
/// <param name="NodeName">Name of the format node (the file node gets a generated name).</param>
public sealed record ImageOpenOptions(string Path, string? Format = null, bool ReadOnly = false, bool Direct = false,
    FileDiscardMode Discard = FileDiscardMode.Unmap, string? NodeName = null);

/// <summary>The image formats the command-line tools open by file name.</summary>
public static class ImageFiles
{
    /// <summary>Formats this build can open.</summary>
    public static IReadOnlyList<string> Formats { get; } = [RawDriver.Name];

    /// <summary>The format for a path: by extension, raw when nothing else fits.</summary>
    public static string GuessFormat(string path) =>
        System.IO.Path.GetExtension(path).Equals(".qcow2", StringComparison.OrdinalIgnoreCase) ? "qcow2" : RawDriver.Name;

    /// <summary>Opens a file node and, above it, a format node; returns the format node.</summary>
    public static async ValueTask<BlockNode> OpenAsync(BlockGraph graph, ImageOpenOptions options, CancellationToken cancellationToken = default)
    {
        var format = options.Format ?? GuessFormat(options.Path);
        if (!Formats.Contains(format))
        {
            throw new BlockOpenException($"Unknown image format '{format}' for '{options.Path}' (supported: {string.Join(", ", Formats)})");
        }

        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(options.Path, options.Direct, Discard: options.Discard), options.ReadOnly, cancellationToken).ConfigureAwait(false);
        try
        {
            return await RawDriver.OpenAsync(graph, options.NodeName, file, readOnly: options.ReadOnly, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await graph.RemoveNodeAsync(file).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Creates a new, empty (sparse) image of the given format and size. Refuses to overwrite.</summary>
    public static void Create(string path, string format, long size)
    {
        if (!Formats.Contains(format))
        {
            throw new BlockOpenException($"Unknown image format '{format}' for '{path}' (supported: {string.Join(", ", Formats)})");
        }

        FileDriver.CreateFile(path, size);
    }
}
