using System.CommandLine;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror resize [-f FMT] [--shrink] [-q] FILE [+|-]SIZE</c>: qemu-img resize. Grows (or, with
/// <c>--shrink</c>, shrinks) the image's virtual size to SIZE, or by SIZE with a sign; prints "Image resized.".
/// A negative relative size needs <c>--</c> before it, as with qemu-img. A driver's refusal is printed in its
/// own words, as qemu-img prints it ("Can't resize a v2 image which has snapshots").
/// </summary>
static class ResizeCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "Image file" };
        var size = new Argument<string>("SIZE") { Description = "New size, or +SIZE / -SIZE relative to the current one" };
        var format = new Option<string?>("--format", "-f") { Description = "Image format (default: probed from the content)" };
        var shrink = new Option<bool>("--shrink") { Description = "Allow making the image smaller (the data past the new end is lost)" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print nothing on success" };
        var command = new Command("resize", "Change an image's virtual size (qemu-img resize)")
        {
            file, size, format, shrink, quiet,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunToolAsync("resize", 1, () =>
            RunAsync(parse.GetValue(file)!, parse.GetValue(format), parse.GetValue(size)!, parse.GetValue(shrink), parse.GetValue(quiet), cancellationToken)));
        return command;
    }

    static async Task<int> RunAsync(string path, string? format, string sizeText, bool shrink, bool quiet, CancellationToken cancellationToken)
    {
        var sign = sizeText.StartsWith('+') ? 1 : sizeText.StartsWith('-') ? -1 : 0;
        var amount = ByteSize.Parse(sign == 0 ? sizeText : sizeText[1..], "size");

        await using var graph = new BlockGraph();
        var node = await ImageTool.OpenAsync(graph, path, format, readOnly: false, withBacking: true, cancellationToken);
        ImageTool.PrintWarnings("resize", node);
        var current = node.Length;
        var size = sign switch
        {
            0 => amount,
            > 0 => amount > long.MaxValue - current ? throw new UsageException($"the new size ({current} + {amount} bytes) is too large") : current + amount,
            < 0 => current - amount,
        };
        if (size < 0)
        {
            throw new UsageException("New image size must be positive.");
        }

        if (size < current && !shrink)
        {
            throw new UsageException("Use the --shrink option to perform a shrink operation.");
        }

        if (size != current)
        {
            try
            {
                await node.TruncateAsync(size, cancellationToken);
            }
            catch (BlockIOException ex) when (ex.Detail is { } detail)
            {
                throw new UsageException(detail, ex);
            }

            await node.FlushAsync(cancellationToken);
        }

        if (!quiet)
        {
            Console.WriteLine("Image resized.");
        }

        return 0;
    }
}
