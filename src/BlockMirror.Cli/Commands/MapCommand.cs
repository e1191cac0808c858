using System.CommandLine;
using System.Globalization;
using System.Text;
using BlockMirror.Block.Graph;
using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror map [-f FMT] [--output=human|json] FILE</c>: qemu-img map. Each extent says which layer
/// of the backing chain decides its content (depth), whether that layer allocates it (present), whether it
/// reads as zeroes and whether it is data, and where the data lives in that layer's file.
/// </summary>
static class MapCommand
{
    /// <summary>qemu-img asks about at most 1 GiB per query.</summary>
    const long QueryLimit = 1L << 30;

    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "Image file" };
        var format = new Option<string?>("--format", "-f") { Description = "Image format (default: probed from the content)" };
        var output = new Option<string?>("--output") { Description = "human (default: the data extents as a table) or json (every extent)" };
        var forceShare = ImageTool.ForceShareOption();
        var command = new Command("map", "Show where each range of an image's content comes from (qemu-img map)")
        {
            file, format, output, forceShare,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunToolAsync("map", 1, () =>
            RunAsync(parse.GetValue(file)!, parse.GetValue(format), ImageTool.IsJson(parse.GetValue(output)), parse.GetValue(forceShare), cancellationToken)));
        return command;
    }

    /// <summary>One extent: QEMU's MapEntry. <see cref="HostOffset"/> is -1 when the data has no place in a file (compressed, or zeroes).</summary>
    record struct MapEntry(long Start, long Length, int Depth, bool Present, bool Zero, bool Data, long HostOffset)
    {
        /// <summary>qemu-img's zero-initialised entry, printed as such for an empty image.</summary>
        public static MapEntry None => new(0, 0, 0, false, false, false, -1);

        public readonly bool HasOffset => HostOffset >= 0;
    }

    static async Task<int> RunAsync(string path, string? format, bool json, bool forceShare, CancellationToken cancellationToken)
    {
        await using var graph = new BlockGraph();
        var top = await ImageTool.OpenAsync(graph, path, format, readOnly: true, withBacking: true, cancellationToken, forceShare);
        ImageTool.PrintWarnings("map", top);
        var layers = ImageTool.NamedLayers(top, ImageTool.DisplayName(path, top));
        var length = top.Length;
        var output = new StringBuilder(json ? "[" : "Offset          Length          Mapped to       File\n");
        Flush(output);
        var current = MapEntry.None;
        for (var offset = 0L; offset < length;)
        {
            var next = await GetEntryAsync(layers, offset, Math.Min(QueryLimit, length - offset), cancellationToken);
            offset += next.Length;
            if (Mergeable(current, next))
            {
                current.Length += next.Length;
                continue;
            }

            if (current.Length > 0)
            {
                Dump(output, current, ref next, json, layers);
                Flush(output);
            }

            current = next;
        }

        var none = MapEntry.None;
        Dump(output, current, ref none, json, layers, last: true);
        if (json)
        {
            output.Append("]\n");
        }

        Flush(output);
        return 0;
    }

    /// <summary>Long images make long maps: print as we go.</summary>
    static void Flush(StringBuilder output)
    {
        Console.Write(output.ToString());
        output.Clear();
    }

    /// <summary>
    /// QEMU 7.2's get_block_status in qemu-img.c: ask each layer from the top down, on a range that shrinks
    /// to each answer, until one says data or zero. A bottom layer without backing answers zero for what it
    /// does not allocate (the block layer adds it), so the walk always ends on an answer.
    /// </summary>
    static async Task<MapEntry> GetEntryAsync(IReadOnlyList<(BlockNode Node, string Name)> layers, long offset, long length, CancellationToken cancellationToken)
    {
        for (var depth = 0; depth < layers.Count; depth++)
        {
            var status = await layers[depth].Node.GetBlockStatusAsync(offset, length, cancellationToken);
            length = status.Length;
            if (status.IsData || status.IsZero)
            {
                return new MapEntry(offset, length, depth, status.IsAllocated, status.IsZero, status.IsData, status.HasHostOffset ? status.HostOffset : -1);
            }
        }

        // No layer answered (a chain ending in a layer that defers to a backing file it does not have).
        return new MapEntry(offset, length, layers.Count - 1, Present: false, Zero: false, Data: false, HostOffset: -1);
    }

    /// <summary>qemu-img's entry_mergeable: same answer from the same layer, and for data the next bytes of the same file.</summary>
    static bool Mergeable(MapEntry current, MapEntry next) =>
        current.Length > 0 && current.Zero == next.Zero && current.Data == next.Data && current.Depth == next.Depth &&
        current.Present == next.Present && current.HasOffset == next.HasOffset &&
        (!current.HasOffset || current.HostOffset + current.Length == next.HostOffset);

    /// <summary>
    /// qemu-img's dump_map_entry. The human table lists only data; it treats zero, zero-data and unallocated
    /// alike, and so rewrites the next entry to merge more of them.
    /// </summary>
    static void Dump(StringBuilder output, MapEntry entry, ref MapEntry next, bool json, IReadOnlyList<(BlockNode Node, string Name)> layers, bool last = false)
    {
        if (json)
        {
            output.Append(CultureInfo.InvariantCulture,
                $"{{ \"start\": {entry.Start}, \"length\": {entry.Length}, \"depth\": {entry.Depth}, \"present\": {Bool(entry.Present)}, \"zero\": {Bool(entry.Zero)}, \"data\": {Bool(entry.Data)}");
            if (entry.HasOffset)
            {
                output.Append(CultureInfo.InvariantCulture, $", \"offset\": {entry.HostOffset}");
            }

            output.Append('}');
            if (!last)
            {
                output.Append(",\n");
            }

            return;
        }

        if (entry.Data && !entry.HasOffset)
        {
            throw new ToolExitException("File contains external, encrypted or compressed clusters.", 1);
        }

        if (entry.Data && !entry.Zero)
        {
            output.Append(QemuText.HexColumn(entry.Start)).Append(QemuText.HexColumn(entry.Length))
                .Append(QemuText.HexColumn(entry.HostOffset)).Append(layers[entry.Depth].Name).Append('\n');
        }

        if (!last && (!next.Data || next.Zero))
        {
            next.Data = false;
            next.Zero = true;
        }
    }

    static string Bool(bool value) => value ? "true" : "false";
}
