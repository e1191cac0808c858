using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers;

/// <summary>Options for opening an image file as a format node over a file node.</summary>
/// <param name="Path">The image file.</param>
/// <param name="Format">
/// Format name; null probes the file's content as QEMU does. A raw image found that way is guarded: a write
/// that would make its first block announce an image format is refused (EPERM), as QEMU refuses it.
/// </param>
/// <param name="ReadOnly">Open both nodes read-only.</param>
/// <param name="Direct">O_DIRECT on the file node (<c>cache.direct</c>), and on the backing files a qcow2 header names.</param>
/// <param name="Discard">Let discards and may-unmap zeroing punch holes (qcow2: free clusters).</param>
/// <param name="NodeName">Name of the format node (the file node gets a generated name).</param>
/// <param name="Qcow2">qcow2 options beyond these (cache size, backing), or null for the defaults.</param>
/// <param name="ForceShare">
/// qemu-img's <c>-U</c>: the image is opened even while another user writes it (read-only only), and the
/// locks it holds forbid nothing to others.
/// </param>
public sealed record ImageOpenOptions(string Path, string? Format = null, bool ReadOnly = false, bool Direct = false,
    FileDiscardMode Discard = FileDiscardMode.Unmap, string? NodeName = null, Qcow2Options? Qcow2 = null, bool ForceShare = false);

/// <summary>The image formats the command-line tools open by file name.</summary>
public static class ImageFiles
{
    /// <summary>Formats this build can open.</summary>
    public static IReadOnlyList<string> Formats { get; } = [RawDriver.Name, Qcow2Driver.Name];

    /// <summary>The format for a file still to be created, by its extension: qcow2 for <c>.qcow2</c>, else raw. An existing file is probed instead (<see cref="Probe"/>).</summary>
    public static string GuessFormat(string path) =>
        System.IO.Path.GetExtension(path).Equals(".qcow2", StringComparison.OrdinalIgnoreCase) ? Qcow2Driver.Name : RawDriver.Name;

    /// <summary>
    /// The format an existing file has by its content (QEMU's probe, <see cref="ImageFormatProbe"/>); raw when
    /// nothing is recognised or the file cannot be read (the open that follows reports that in its own words).
    /// </summary>
    public static string Probe(string path)
    {
        try
        {
            return ImageFormatProbe.Detect(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return RawDriver.Name;
        }
    }

    /// <summary>Opens a file node and, above it, a format node (with its backing chain); returns the format node.</summary>
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, ImageOpenOptions options, CancellationToken cancellationToken = default) =>
        OpenAsync(graph, options, [], cancellationToken);

    internal static async ValueTask<BlockNode> OpenAsync(BlockGraph graph, ImageOpenOptions options, IReadOnlyList<string> chain, CancellationToken cancellationToken)
    {
        var probed = options.Format is null;
        var format = options.Format ?? Probe(options.Path);
        if (!Formats.Contains(format))
        {
            throw new BlockOpenException(probed
                ? $"'{options.Path}' is a {format} image, a format this build cannot open (supported: {string.Join(", ", Formats)})"
                : $"Unknown image format '{format}' for '{options.Path}' (supported: {string.Join(", ", Formats)})");
        }

        if (options.ForceShare && !options.ReadOnly)
        {
            throw new BlockOpenException($"Could not open '{options.Path}': force-share=on can only be used with read-only images");
        }

        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(options.Path, options.Direct, Discard: options.Discard), options.ReadOnly, cancellationToken).ConfigureAwait(false);
        file.ForceShare = options.ForceShare;
        try
        {
            BlockNode node;
            if (format == Qcow2Driver.Name)
            {
                var qcow2 = (options.Qcow2 ?? new Qcow2Options()) with { Discard = options.Discard, BackingDirect = options.Direct, Chain = chain };
                node = await Qcow2Driver.OpenAsync(graph, options.NodeName, file, qcow2, options.ReadOnly, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                node = await RawDriver.OpenAsync(graph, options.NodeName, file, new RawDriverOptions(Probed: probed), options.ReadOnly, cancellationToken).ConfigureAwait(false);
            }

            node.ForceShare = options.ForceShare;
            return node;
        }
        catch (BlockGraphException ex) when (ex.Hint is not null)
        {
            // Another user's lock: worded as qemu-img words it, with its hint.
            await graph.RemoveNodeAsync(file).ConfigureAwait(false);
            throw new BlockGraphException(ex.Kind, $"Could not open '{options.Path}': {ex.Message}") { Hint = ex.Hint };
        }
        catch
        {
            await graph.RemoveNodeAsync(file).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Throws a <see cref="BlockGraphException"/> (<c>Failed to get "write" lock</c>, with qemu-img's hint) when
    /// another process holds the image at <paramref name="path"/>: a creation must not replace or truncate it.
    /// </summary>
    public static void CheckReplaceable(string path) => FileLocks.CheckReplaceable(path);

    /// <summary>Creates a new, empty (sparse) image of the given format and size. Refuses to overwrite.</summary>
    public static void Create(string path, string format, long size, string? backingFile = null, string? backingFormat = null)
    {
        if (format == Qcow2Driver.Name)
        {
            Qcow2Create.Create(path, new Qcow2CreateOptions { Size = size, BackingFile = backingFile, BackingFormat = backingFormat });
            return;
        }

        if (backingFile is not null)
        {
            throw new BlockOpenException($"Backing file not supported for file format '{format}'");
        }

        if (!Formats.Contains(format))
        {
            throw new BlockOpenException($"Unknown image format '{format}' for '{path}' (supported: {string.Join(", ", Formats)})");
        }

        FileDriver.CreateFile(path, size);
    }
}
