using System.CommandLine;
using System.Globalization;
using System.Text;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror info [-f FMT] [--backing-chain] [--output=human|json] FILE</c>: qemu-img info's report,
/// in its words and JSON shape. Each image of a chain is opened by itself, read-only, without its backing
/// file, as qemu-img does: the report of an overlay whose backing file is missing still comes out.
/// </summary>
static class InfoCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "Image file" };
        var format = new Option<string?>("--format", "-f") { Description = "Image format (default: probed from the content)" };
        var chain = new Option<bool>("--backing-chain") { Description = "Report every image of the backing chain, top first" };
        var output = new Option<string?>("--output") { Description = "human (default) or json" };
        var forceShare = ImageTool.ForceShareOption();
        var command = new Command("info", "Show an image's format, sizes, backing file and format-specific information (qemu-img info)")
        {
            file, format, chain, output, forceShare,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunToolAsync("info", 1, () =>
            RunAsync(parse.GetValue(file)!, parse.GetValue(format), parse.GetValue(chain), ImageTool.IsJson(parse.GetValue(output)),
                parse.GetValue(forceShare), cancellationToken)));
        return command;
    }

    /// <summary>One image's report: qemu-img's ImageInfo fields.</summary>
    sealed record ImageReport(string Filename, string Format, long VirtualSize, long? ActualSize, bool? DirtyFlag, Qcow2Header? Header,
        string? BackingFilename, string? FullBackingFilename, string? BackingFormat, IReadOnlyList<SnapshotInfo> Snapshots,
        IReadOnlyList<PersistentBitmapInfo> Bitmaps);

    static async Task<int> RunAsync(string path, string? format, bool backingChain, bool json, bool forceShare, CancellationToken cancellationToken)
    {
        var reports = new List<ImageReport>();
        var seen = new HashSet<string>();
        string? next = path;
        var nextFormat = format;
        while (next is not null)
        {
            if (!seen.Add(Identity(next)))
            {
                throw new IOException($"Backing file '{next}' creates an infinite loop.");
            }

            var report = await ReportAsync(next, nextFormat, forceShare, cancellationToken);
            reports.Add(report);
            if (!backingChain)
            {
                break;
            }

            next = report.FullBackingFilename;
            nextFormat = report.BackingFormat;
        }

        if (json)
        {
            Console.Write(backingChain ? QemuJson.ToPrettyArray([.. reports.Select(ToJson)]) : ToJson(reports[0]).ToPrettyString());
            Console.Write('\n');
        }
        else
        {
            Console.Write(string.Join("\n", reports.Select(ToHuman)));
        }

        return 0;
    }

    static string Identity(string path) =>
        Block.Interop.FileStatus.Identify(path) is { } id ? $"{id.DevMajor}:{id.DevMinor}:{id.Inode}" : Path.GetFullPath(path);

    static async Task<ImageReport> ReportAsync(string path, string? format, bool forceShare, CancellationToken cancellationToken)
    {
        await using var graph = new BlockGraph();
        var node = await ImageTool.OpenAsync(graph, path, format, readOnly: true, withBacking: false, cancellationToken, forceShare);
        ImageTool.PrintWarnings("info", node);
        var header = Qcow2Inspection.HeaderOf(node);
        var backing = header?.BackingFile;
        var file = ImageFiles.LocalFile(path);
        return new ImageReport(
            ImageTool.DisplayName(path, node),
            node.Driver.DriverName,
            node.Length,
            file is null ? null : FileStatus.AllocatedBytes(file),
            // QEMU asks the format, and raw asks its file: an NBD export has no answer, so nothing is shown.
            header is not null ? (header.IncompatibleFeatures & Qcow2Header.IncompatibleDirty) != 0 : file is null ? null : false,
            header,
            backing,
            backing is null ? null : FullBackingName(path, backing),
            backing is null ? null : header!.BackingFormat,
            Qcow2Inspection.SnapshotsOf(node),
            Qcow2Inspection.BitmapsOf(node));
    }

    /// <summary>Where the backing file is; null when it cannot be said (a relative name in an NBD export's image), as qemu-img leaves it out.</summary>
    static string? FullBackingName(string path, string backing)
    {
        try
        {
            return BackingPaths.Resolve(path, backing);
        }
        catch (BlockOpenException)
        {
            return null;
        }
    }

    /// <summary>The fields in QAPI's ImageInfo order; <see cref="QemuJson"/> prints them in QEMU's order.</summary>
    static QemuJson ToJson(ImageReport r)
    {
        var json = new QemuJson()
            .Add("filename", r.Filename)
            .Add("format", r.Format);
        if (r.DirtyFlag is { } dirty)
        {
            json.Add("dirty-flag", dirty);
        }

        if (r.ActualSize is { } actual)
        {
            json.Add("actual-size", actual);
        }

        json.Add("virtual-size", r.VirtualSize);
        if (r.Header is { } header)
        {
            json.Add("cluster-size", (long)header.ClusterSize);
        }

        if (r.BackingFilename is { } backing)
        {
            json.Add("backing-filename", backing);
            if (r.FullBackingFilename is { } full)
            {
                json.Add("full-backing-filename", full);
            }

            if (r.BackingFormat is { } backingFormat)
            {
                json.Add("backing-filename-format", backingFormat);
            }
        }

        if (r.Snapshots.Count > 0)
        {
            json.Add("snapshots", r.Snapshots.Select(ToJson).ToList());
        }

        if (r.Header is { } h)
        {
            json.Add("format-specific", new QemuJson().Add("type", DriverNames.Qcow2).Add("data", Qcow2Specific(h, r.Bitmaps)));
        }

        return json;
    }

    /// <summary>QAPI's SnapshotInfo.</summary>
    static QemuJson ToJson(SnapshotInfo s)
    {
        var json = new QemuJson()
            .Add("id", s.Id)
            .Add("name", s.Name)
            .Add("vm-state-size", s.VmStateSize)
            .Add("date-sec", s.DateSeconds)
            .Add("date-nsec", s.DateNanoseconds)
            .Add("vm-clock-sec", s.VmClockNanoseconds / 1_000_000_000)
            .Add("vm-clock-nsec", s.VmClockNanoseconds % 1_000_000_000);
        if (s.InstructionCount is { } icount)
        {
            json.Add("icount", icount);
        }

        return json;
    }

    /// <summary>QAPI's ImageInfoSpecificQCow2: version 2 images have no feature bits, so only three fields; bitmaps when there are any.</summary>
    static QemuJson Qcow2Specific(Qcow2Header h, IReadOnlyList<PersistentBitmapInfo> bitmaps)
    {
        var data = new QemuJson().Add("compat", h.Version == 2 ? "0.10" : "1.1");
        if (h.Version >= 3)
        {
            data.Add("lazy-refcounts", (h.CompatibleFeatures & Qcow2Header.CompatibleLazyRefcounts) != 0)
                .Add("corrupt", (h.IncompatibleFeatures & Qcow2Header.IncompatibleCorrupt) != 0)
                .Add("extended-l2", h.HasExtendedL2);
        }

        data.Add("refcount-bits", (long)h.RefcountBits);
        if (bitmaps.Count > 0)
        {
            // QAPI's Qcow2BitmapInfo: name, granularity, flags.
            data.Add("bitmaps", bitmaps.Select(b => new QemuJson().Add("name", b.Name).Add("granularity", b.Granularity).Add("flags", BitmapFlags(b))).ToList());
        }

        return data.Add("compression-type", h.CompressionType == 0 ? "zlib" : "zstd");
    }

    /// <summary>QEMU's bdrv_image_info_dump.</summary>
    static string ToHuman(ImageReport r)
    {
        var text = new StringBuilder();
        text.Append($"image: {r.Filename}\n");
        text.Append($"file format: {r.Format}\n");
        text.Append($"virtual size: {QemuText.SizeToString(r.VirtualSize)} ({r.VirtualSize} bytes)\n");
        text.Append($"disk size: {(r.ActualSize is { } actual ? QemuText.SizeToString(actual) : "unavailable")}\n");
        if (r.Header is { } header)
        {
            text.Append($"cluster_size: {header.ClusterSize}\n");
        }

        if (r.DirtyFlag == true)
        {
            text.Append("cleanly shut down: no\n");
        }

        if (r.BackingFilename is { } backing)
        {
            text.Append($"backing file: {backing}");
            if (r.FullBackingFilename is null)
            {
                text.Append(" (cannot determine actual path)");
            }
            else if (r.FullBackingFilename != backing)
            {
                text.Append($" (actual path: {r.FullBackingFilename})");
            }

            text.Append('\n');
        }

        if (r.BackingFormat is { } backingFormat)
        {
            text.Append($"backing file format: {backingFormat}\n");
        }

        if (r.Snapshots.Count > 0)
        {
            text.Append("Snapshot list:\n");
            text.Append(CultureInfo.InvariantCulture, $"{"ID",-10}{"TAG",-17}{"VM SIZE",8}{"DATE",20}{"VM CLOCK",13}{"ICOUNT",11}\n");
            foreach (var s in r.Snapshots)
            {
                text.Append(SnapshotLine(s)).Append('\n');
            }
        }

        if (r.Header is { } h)
        {
            text.Append("Format specific information:\n");
            text.Append($"    compat: {(h.Version == 2 ? "0.10" : "1.1")}\n");
            text.Append($"    compression type: {(h.CompressionType == 0 ? "zlib" : "zstd")}\n");
            if (h.Version >= 3)
            {
                text.Append($"    lazy refcounts: {Bool((h.CompatibleFeatures & Qcow2Header.CompatibleLazyRefcounts) != 0)}\n");
            }

            if (r.Bitmaps.Count > 0)
            {
                text.Append("    bitmaps:\n");
                for (var i = 0; i < r.Bitmaps.Count; i++)
                {
                    var b = r.Bitmaps[i];
                    text.Append(CultureInfo.InvariantCulture, $"        [{i}]:\n            flags:\n");
                    var flags = BitmapFlags(b);
                    for (var f = 0; f < flags.Count; f++)
                    {
                        text.Append(CultureInfo.InvariantCulture, $"                [{f}]: {flags[f]}\n");
                    }

                    text.Append($"            name: {b.Name}\n");
                    text.Append(CultureInfo.InvariantCulture, $"            granularity: {b.Granularity}\n");
                }
            }

            text.Append($"    refcount bits: {h.RefcountBits}\n");
            if (h.Version >= 3)
            {
                text.Append($"    corrupt: {Bool((h.IncompatibleFeatures & Qcow2Header.IncompatibleCorrupt) != 0)}\n");
                text.Append($"    extended l2: {Bool(h.HasExtendedL2)}\n");
            }
        }

        return text.ToString();
    }

    /// <summary>QEMU's bdrv_snapshot_dump: <c>%-9s %-16s %8s%20s%13s%11s</c>, the date in local time.</summary>
    static string SnapshotLine(SnapshotInfo s)
    {
        var date = DateTimeOffset.FromUnixTimeSeconds(s.DateSeconds).ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
        var seconds = s.VmClockNanoseconds / 1_000_000_000;
        var clock = string.Create(CultureInfo.InvariantCulture,
            $"{seconds / 3600:00}:{seconds / 60 % 60:00}:{seconds % 60:00}.{s.VmClockNanoseconds / 1_000_000 % 1000:000}");
        var icount = s.InstructionCount?.ToString(CultureInfo.InvariantCulture) ?? "";
        return string.Create(CultureInfo.InvariantCulture,
            $"{s.Id,-9} {s.Name,-16} {QemuText.SizeToString(s.VmStateSize),8}{date,20}{clock,13}{icount,11}");
    }

    /// <summary>QAPI's Qcow2BitmapInfoFlags, in QEMU's order.</summary>
    static List<string> BitmapFlags(PersistentBitmapInfo bitmap)
    {
        List<string> flags = [];
        if (bitmap.InUse)
        {
            flags.Add("in-use");
        }

        if (bitmap.Auto)
        {
            flags.Add("auto");
        }

        return flags;
    }

    static string Bool(bool value) => value ? "true" : "false";
}
