using System.Buffers;
using System.Text.Json;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers;

/// <summary>Options for opening an image file as a format node over a file node.</summary>
/// <param name="Path">The image file.</param>
/// <param name="Format">
/// Format name; null probes the file's content as QEMU does. A raw image found that way is guarded: a write
/// that would make its first block announce an image format is refused (EPERM), as QEMU refuses it.
/// </param>
/// <param name="ReadOnly">Open both nodes read-only.</param>
/// <param name="Direct">O_DIRECT on the file node (<c>cache.direct</c>), and on the backing files a qcow2 header names.</param>
/// <param name="Discard">
/// The format node's <c>discard</c>: let discards and may-unmap zeroing punch holes (qcow2: free clusters). The
/// protocol node under it unmaps whatever this says, as QEMU's does; the format node decides what reaches it.
/// </param>
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
    public static IReadOnlyList<string> Formats => DriverRegistry.Formats;

    /// <summary>The format for a file still to be created, by its extension: qcow2 for <c>.qcow2</c>, else raw. An existing file is probed instead (<see cref="Probe"/>).</summary>
    public static string GuessFormat(string path) =>
        System.IO.Path.GetExtension(path).Equals(".qcow2", StringComparison.OrdinalIgnoreCase) ? Qcow2Driver.Name : RawDriver.Name;

    /// <summary>
    /// The local file an image name stands for: the name, or PATH for <c>file:PATH</c>; null when the name is
    /// another protocol's (<c>nbd://...</c>, or a prefix no driver claims). Such an image is opened, never
    /// created, truncated or deleted as a file.
    /// </summary>
    public static string? LocalFile(string path) => DriverRegistry.ProtocolPrefix(path) switch
    {
        null => path,
        { } prefix when FileDeclaration.Driver.Protocols.Contains(prefix) => path[(prefix.Length + 1)..],
        _ => null,
    };

    /// <summary>
    /// Refuses, in QEMU's words, a name whose protocol prefix no driver claims (<c>Unknown protocol 'nbds'</c>)
    /// or whose protocol does not read it (<c>No valid URL specified</c>), without opening anything.
    /// </summary>
    /// <exception cref="BlockOpenException">The name is refused.</exception>
    public static void CheckName(string path)
    {
        if (DriverRegistry.FindProtocol(path) is { ParseFileName: { } parse })
        {
            using var scratch = new Utf8JsonWriter(Stream.Null);
            scratch.WriteStartObject();
            parse(path, scratch);
        }
    }

    /// <summary>
    /// The format an existing file has by its content (QEMU's probe, <see cref="ImageFormatProbe"/>); raw when
    /// nothing is recognised or the file cannot be read (the open that follows reports that in its own words).
    /// </summary>
    public static string Probe(string path)
    {
        // Only a regular file is read: a FIFO would hold the open up, and the file driver refuses the rest.
        if (FileStatus.KindOf(path) is { } kind && kind != UnixFileKind.Regular)
        {
            return RawDriver.Name;
        }

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
        // The driver the name's prefix names (QEMU's bdrv_find_protocol); null (or file:) is a local file.
        var protocol = DriverRegistry.FindProtocol(options.Path) ?? FileDeclaration.Driver;
        if (options.Format is null && protocol != FileDeclaration.Driver)
        {
            // An export's format is read through its own node (QEMU's find_image_format), which the format
            // node then opens over: one connection serves both, as in QEMU (a server may take one client only).
            var node = await OpenProtocolAsync(graph, options, protocol, cancellationToken).ConfigureAwait(false);
            return await OpenOverAsync(graph, options, node, chain, cancellationToken).ConfigureAwait(false);
        }

        var probed = options.Format is null;
        var format = options.Format ?? Probe(LocalFile(options.Path)!);
        CheckFormat(options, format, probed);

        // The same options blockdev-add would take for this image, read by the same registry.
        using var blockdev = JsonDocument.Parse(BlockdevOptions(options, format, writer => WriteInlineFile(writer, options, protocol)));
        return await OpenFormatAsync(graph, options, blockdev, probed, chain, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Opens only the node that holds an image's bytes, as <see cref="OpenAsync(BlockGraph, ImageOpenOptions, CancellationToken)"/>
    /// would open it under the format node: a file, or what the name's protocol says (an NBD export). Its name
    /// is generated, so it goes with the format node <see cref="OpenOverAsync(BlockGraph, ImageOpenOptions, BlockNode, CancellationToken)"/>
    /// opens over it.
    /// </summary>
    public static ValueTask<BlockNode> OpenProtocolAsync(BlockGraph graph, ImageOpenOptions options, CancellationToken cancellationToken = default) =>
        OpenProtocolAsync(graph, options, DriverRegistry.FindProtocol(options.Path) ?? FileDeclaration.Driver, cancellationToken);

    static async ValueTask<BlockNode> OpenProtocolAsync(BlockGraph graph, ImageOpenOptions options, DriverDeclaration protocol, CancellationToken cancellationToken)
    {
        using var protocolOptions = JsonDocument.Parse(Serialize(writer =>
        {
            WriteProtocol(writer, options, protocol);
            writer.WriteBoolean("read-only", options.ReadOnly);
            if (options.ForceShare)
            {
                writer.WriteBoolean("force-share", true);
            }
        }));
        return await DriverRegistry.OpenAsync(graph, new OptionReader(protocolOptions.RootElement), new OpenRules(), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Opens the format node of an image over its protocol node (from <see cref="OpenProtocolAsync(BlockGraph, ImageOpenOptions, CancellationToken)"/>),
    /// in the format given or, when none is, the one its first bytes announce (read through the node, a raw
    /// image found so guarded as ever). When this fails the protocol node is closed.
    /// </summary>
    public static ValueTask<BlockNode> OpenOverAsync(BlockGraph graph, ImageOpenOptions options, BlockNode protocol, CancellationToken cancellationToken = default) =>
        OpenOverAsync(graph, options, protocol, [], cancellationToken);

    static async ValueTask<BlockNode> OpenOverAsync(BlockGraph graph, ImageOpenOptions options, BlockNode protocol, IReadOnlyList<string> chain,
        CancellationToken cancellationToken)
    {
        try
        {
            var probed = options.Format is null;
            var format = options.Format;
            if (format is null)
            {
                var start = new byte[(int)Math.Min(ImageFormatProbe.Size, protocol.Length)];
                await protocol.ReadAsync(0, start, cancellationToken).ConfigureAwait(false);
                format = ImageFormatProbe.Detect(start);
            }

            CheckFormat(options, format, probed);
            using var blockdev = JsonDocument.Parse(BlockdevOptions(options, format, writer => writer.WriteString("file", protocol.Name)));
            return await OpenFormatAsync(graph, options, blockdev, probed, chain, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            if (protocol.Parents.Count == 0)
            {
                await graph.RemoveNodeAsync(protocol).ConfigureAwait(false);
            }

            throw;
        }
    }

    static void CheckFormat(ImageOpenOptions options, string format, bool probed)
    {
        if (!Formats.Contains(format))
        {
            throw new BlockOpenException(probed
                ? $"'{options.Path}' is a {format} image, a format this build cannot open (supported: {string.Join(", ", Formats)})"
                : $"Unknown image format '{format}' for '{options.Path}' (supported: {string.Join(", ", Formats)})");
        }
    }

    static async ValueTask<BlockNode> OpenFormatAsync(BlockGraph graph, ImageOpenOptions options, JsonDocument blockdev, bool probed, IReadOnlyList<string> chain,
        CancellationToken cancellationToken)
    {
        try
        {
            return await DriverRegistry.OpenAsync(graph, new OptionReader(blockdev.RootElement), new OpenRules { ProbedFormat = probed, Chain = chain },
                cancellationToken).ConfigureAwait(false);
        }
        catch (BlockGraphException ex) when (ex.Hint is not null)
        {
            // Another user's lock: worded as qemu-img words it, with its hint.
            throw new BlockGraphException(ex.Kind, $"Could not open '{options.Path}': {ex.Message}") { Hint = ex.Hint };
        }
        catch (BlockOpenException ex) when (ex.InnerException is Qcow2Exception)
        {
            // A qcow2 header or table QEMU refuses: in qemu-img's words, "Could not open 'FILE': <QEMU's reason>".
            throw new BlockOpenException($"Could not open '{options.Path}': {ex.Message}", ex.Errno, ex.InnerException);
        }
        catch (BlockOptionException ex) when (options.ForceShare && !options.ReadOnly)
        {
            throw new BlockOpenException($"Could not open '{options.Path}': {ex.Message}");
        }
    }

    /// <summary>Opens just a <c>file</c> node on an image (for tools that read an image's bytes as they are, such as a check).</summary>
    public static async ValueTask<BlockNode> OpenFileNodeAsync(BlockGraph graph, string path, bool readOnly, CancellationToken cancellationToken = default)
    {
        using var blockdev = JsonDocument.Parse(Serialize(writer =>
        {
            WriteFile(writer, path, direct: false, FileDiscardMode.Ignore);
            writer.WriteBoolean("read-only", readOnly);
        }));
        return await DriverRegistry.OpenAsync(graph, new OptionReader(blockdev.RootElement), new OpenRules(), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// An image as blockdev-add options: the format node (node name, read-only, discard, cache.direct, the
    /// qcow2 options given) over an inline file node with the same cache.direct and discard=unmap.
    /// </summary>
    static byte[] BlockdevOptions(ImageOpenOptions options, string format, Action<Utf8JsonWriter> writeFile) => Serialize(writer =>
    {
        writer.WriteString("driver", format);
        if (options.NodeName is { } name)
        {
            writer.WriteString("node-name", name);
        }

        writer.WriteBoolean("read-only", options.ReadOnly);
        if (options.ForceShare)
        {
            writer.WriteBoolean("force-share", true);
        }

        WriteNodeBase(writer, options.Direct, options.Discard);
        if (format == DriverNames.Qcow2 && options.Qcow2 is { } qcow2)
        {
            if (qcow2.L2CacheSize is { } l2Cache)
            {
                writer.WriteNumber("l2-cache-size", l2Cache);
            }

            switch (qcow2.Backing)
            {
                case Qcow2BackingMode.None:
                    writer.WriteNull("backing");
                    break;
                case Qcow2BackingMode.Node:
                    writer.WriteString("backing", qcow2.BackingNode?.Name ?? throw new BlockOpenException("qcow2: backing mode 'node' needs a backing node"));
                    break;
            }
        }

        writeFile(writer);
    });

    /// <summary>
    /// The options of the node that holds the image's bytes: a file, or what the name's protocol prefix says
    /// (<c>nbd://h/x</c>: an nbd node's server and export; <c>file:PATH</c>: the file PATH), with the format
    /// node's cache.direct and discard=unmap.
    /// </summary>
    static void WriteProtocol(Utf8JsonWriter writer, ImageOpenOptions options, DriverDeclaration protocol)
    {
        writer.WriteString("driver", protocol.Name);
        if (DriverRegistry.ProtocolPrefix(options.Path) is null)
        {
            writer.WriteString("filename", options.Path);
        }
        else
        {
            protocol.ParseFileName!(options.Path, writer);
        }

        // QEMU opens an image's protocol node as a child of its format node, with discard=unmap (its
        // bdrv_inherited_options): the format node decides which discards and unmapping zeroes go down.
        WriteNodeBase(writer, options.Direct, FileDiscardMode.Unmap);
    }

    static void WriteInlineFile(Utf8JsonWriter writer, ImageOpenOptions options, DriverDeclaration protocol)
    {
        writer.WriteStartObject("file");
        WriteProtocol(writer, options, protocol);
        writer.WriteEndObject();
    }

    static void WriteFile(Utf8JsonWriter writer, string path, bool direct, FileDiscardMode discard)
    {
        writer.WriteString("driver", DriverNames.File);
        writer.WriteString("filename", path);
        WriteNodeBase(writer, direct, discard);
    }

    static void WriteNodeBase(Utf8JsonWriter writer, bool direct, FileDiscardMode discard)
    {
        writer.WriteString("discard", discard == FileDiscardMode.Unmap ? "unmap" : "ignore");
        writer.WriteStartObject("cache");
        writer.WriteBoolean("direct", direct);
        writer.WriteEndObject();
    }

    static byte[] Serialize(Action<Utf8JsonWriter> members)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            members(writer);
            writer.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// Throws a <see cref="BlockGraphException"/> (<c>Failed to get "write" lock</c>, with qemu-img's hint) when
    /// another process holds the image at <paramref name="path"/>: a creation must not replace or truncate it.
    /// </summary>
    public static void CheckReplaceable(string path) => FileLocks.CheckReplaceable(path);

    /// <summary>
    /// Whether the file open as <paramref name="handle"/> is an image some process (QEMU, or this one) has open: it
    /// holds image locks. A file written for another purpose (a log) must then be left alone.
    /// </summary>
    public static bool IsOpenAsImage(SafeFileHandle handle) => FileLocks.HeldAsImage(handle);

    /// <summary>Creates a new, empty (sparse) image of the given format and size. Refuses to overwrite.</summary>
    public static void Create(string path, string format, long size, string? backingFile = null, string? backingFormat = null)
    {
        // file:PATH is PATH; another protocol's image (an NBD export) exists already and is never made here.
        if (DriverRegistry.FindProtocol(path) is { } protocol && protocol != FileDeclaration.Driver)
        {
            throw new BlockOpenException($"Could not create '{path}': a {protocol.Name} image is opened, never created");
        }

        path = LocalFile(path)!;
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
