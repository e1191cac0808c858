using System.CommandLine;
using System.Text;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror check [-f FMT] [-r leaks|all] [--output=human|json] [-q] FILE</c>: qemu-img check, with its
/// report and its exit codes: 0 consistent, 1 the check could not be completed, 2 corruptions, 3 only leaked
/// clusters, 63 a format that has no check (raw). The image is opened read-only unless <c>-r</c> is given.
/// </summary>
static class CheckCommand
{
    /// <summary>qemu-img check's exit codes.</summary>
    const int ExitFailed = 1;
    const int ExitCorrupt = 2;
    const int ExitLeaks = 3;
    const int ExitNoCheck = 63;

    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "Image file" };
        var format = new Option<string?>("--format", "-f") { Description = "Image format (default: probed from the content)" };
        var repair = new Option<string?>("--repair", "-r") { Description = "Repair: leaks (leaked clusters only) or all (also corruptions)" };
        var output = new Option<string?>("--output") { Description = "human (default) or json" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print no report (the exit code tells)" };
        var forceShare = ImageTool.ForceShareOption();
        var command = new Command("check", "Check a qcow2 image's metadata for consistency, and optionally repair it (qemu-img check)")
        {
            file, format, repair, output, quiet, forceShare,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunToolAsync("check", ExitFailed, () =>
            RunAsync(parse.GetValue(file)!, parse.GetValue(format), ParseRepair(parse.GetValue(repair)), ImageTool.IsJson(parse.GetValue(output)),
                parse.GetValue(quiet), parse.GetValue(forceShare), cancellationToken)));
        return command;
    }

    static Qcow2RepairMode ParseRepair(string? text) => text switch
    {
        null => Qcow2RepairMode.None,
        "leaks" => Qcow2RepairMode.Leaks,
        "all" => Qcow2RepairMode.All,
        _ => throw new UsageException($"Unknown option value for -r (expecting 'leaks' or 'all'): {text}"),
    };

    static async Task<int> RunAsync(string path, string? format, Qcow2RepairMode repair, bool json, bool quiet, bool forceShare, CancellationToken cancellationToken)
    {
        var readOnly = repair == Qcow2RepairMode.None;
        if (forceShare && !readOnly)
        {
            throw new UsageException($"Could not open '{path}': force-share=on can only be used with read-only images");
        }

        // Not yet over NBD: the check reads the file itself (below), and an export is not a file here.
        path = ImageFiles.LocalFile(path) ?? throw new UsageException($"'{path}' is not a local image file; check reads image files only");
        await using var graph = new BlockGraph();
        // The check reads (and a repair writes) the file directly: an image too damaged for the qcow2 driver
        // to open can still be checked, and repaired.
        var file = await ImageFiles.OpenFileNodeAsync(graph, path, readOnly, cancellationToken);
        ImageTool.UseAsFormatFile(graph, file, path, readOnly, forceShare);
        format = ImageTool.FormatOf(path, format)!;
        if (!ImageFiles.Formats.Contains(format))
        {
            throw new UsageException($"Unknown image format '{format}' (supported: {string.Join(", ", ImageFiles.Formats)})");
        }

        if (format != DriverNames.Qcow2)
        {
            throw new ToolExitException("This image format does not support checks", ExitNoCheck);
        }

        Qcow2CheckResult result;
        try
        {
            result = await Qcow2Check.CheckAsync(file, repair, cancellationToken);
        }
        catch (Qcow2CheckFailedException e)
        {
            // qemu-img's two lines: what stopped the check (when it says), then "Check failed: <strerror>".
            if (e.Message.Length > 0)
            {
                await CliErrors.FailAsync("check", e.Message, ExitFailed);
            }

            return await CliErrors.FailAsync("check", $"Check failed: {BlockErrnoText.Describe(e.Errno)}", ExitFailed);
        }
        catch (Qcow2Exception e)
        {
            // A header qemu-img's check cannot open either: its words, "Could not open 'FILE': <reason>".
            throw new BlockOpenException($"Could not open '{path}': {e.Message}", e.Errno, e);
        }
        foreach (var warning in result.Warnings)
        {
            await Console.Error.WriteLineAsync($"blockmirror check: warning: {warning}");
        }

        // qemu-img's qcow2 check prints what it finds on stderr as it goes, whatever -q says.
        foreach (var message in result.Messages)
        {
            await Console.Error.WriteLineAsync(message);
        }

        if (result.Failed)
        {
            // qemu-img prints no report when the check cannot complete (a repair that needs -r all).
            return await CliErrors.FailAsync("check", "Check failed: Input/output error", ExitFailed);
        }

        if (!quiet)
        {
            Console.Write(json ? ToJson(path, result).ToPrettyString() + "\n" : ToHuman(result));
        }

        if (result.CheckErrors > 0)
        {
            return await CliErrors.FailAsync("check", "Check failed", ExitFailed);
        }

        return result.Corruptions > 0 ? ExitCorrupt : result.Leaks > 0 ? ExitLeaks : 0;
    }

    /// <summary>QAPI's ImageCheck, optional members present only when not zero (qemu-img's collect_image_check).</summary>
    static QemuJson ToJson(string path, Qcow2CheckResult r) =>
        new QemuJson()
            .Add("filename", path)
            .Add("format", DriverNames.Qcow2)
            .Add("check-errors", r.CheckErrors)
            .AddNonZero("image-end-offset", r.ImageEndOffset)
            .AddNonZero("corruptions", r.Corruptions)
            .AddNonZero("leaks", r.Leaks)
            .AddNonZero("corruptions-fixed", r.CorruptionsFixed)
            .AddNonZero("leaks-fixed", r.LeaksFixed)
            .AddNonZero("total-clusters", r.TotalClusters)
            .AddNonZero("allocated-clusters", r.AllocatedClusters)
            .AddNonZero("fragmented-clusters", r.FragmentedClusters)
            .AddNonZero("compressed-clusters", r.CompressedClusters);

    /// <summary>qemu-img's report: what was repaired, what is wrong, the allocation figures and the end offset.</summary>
    static string ToHuman(Qcow2CheckResult r)
    {
        var text = new StringBuilder();
        if (r.CorruptionsFixed > 0 || r.LeaksFixed > 0)
        {
            text.Append("The following inconsistencies were found and repaired:\n\n")
                .Append($"    {r.LeaksFixed} leaked clusters\n")
                .Append($"    {r.CorruptionsFixed} corruptions\n\n")
                .Append("Double checking the fixed image now...\n");
        }

        if (r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0)
        {
            text.Append("No errors were found on the image.\n");
        }
        else
        {
            if (r.Corruptions > 0)
            {
                text.Append($"\n{r.Corruptions} errors were found on the image.\n")
                    .Append("Data may be corrupted, or further writes to the image may corrupt it.\n");
            }

            if (r.Leaks > 0)
            {
                text.Append($"\n{r.Leaks} leaked clusters were found on the image.\n")
                    .Append("This means waste of disk space, but no harm to data.\n");
            }

            if (r.CheckErrors > 0)
            {
                text.Append($"\n{r.CheckErrors} internal errors have occurred during the check.\n");
            }
        }

        if (r.TotalClusters != 0 && r.AllocatedClusters != 0)
        {
            text.Append($"{r.AllocatedClusters}/{r.TotalClusters} = {QemuText.Percent(r.AllocatedClusters * 100.0 / r.TotalClusters)}% allocated, ")
                .Append($"{QemuText.Percent(r.FragmentedClusters * 100.0 / r.AllocatedClusters)}% fragmented, ")
                .Append($"{QemuText.Percent(r.CompressedClusters * 100.0 / r.AllocatedClusters)}% compressed clusters\n");
        }

        if (r.ImageEndOffset != 0)
        {
            text.Append($"Image end offset: {r.ImageEndOffset}\n");
        }

        return text.ToString();
    }
}
