using System.CommandLine;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Ui;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror commit IMAGE [-b BASE] [-d]</c>: folds an overlay into its backing file, as
/// <c>qemu-img commit</c> does: an active commit of IMAGE into its immediate backing file (or BASE, deeper
/// in the chain), completed at once when in sync; then IMAGE is emptied so that it reads its backing
/// again, unless -d or -b (the images between would no longer read right through an emptied top).
/// </summary>
static class CommitCommand
{
    public static Command Create()
    {
        var image = new Argument<string>("IMAGE") { Description = "The overlay to commit" };
        var format = new Option<string?>("--format", "-f") { Description = "Format of IMAGE (default: probed)" };
        var baseOption = new Option<string?>("--base", "-b") { Description = "The image of the backing chain to commit into (default: IMAGE's backing file); implies -d" };
        var keep = new Option<bool>("--keep", "-d") { Description = "Leave IMAGE as it is afterwards instead of emptying it" };
        var progress = new Option<bool>("--progress", "-p") { Description = "Show progress" };
        var speed = new Option<string?>("--rate-limit", "-r") { Description = "Bytes per second, e.g. 100M (default: unlimited)" };
        var cache = new Option<string>("--cache", "-t")
        {
            Description = "How the images are opened: none (O_DIRECT), writeback (page cache), or auto (none where the file allows it)",
            DefaultValueFactory = _ => "writeback",
        };
        var json = new Option<bool>("--json") { Description = "Print QMP-style JSON events and progress, one object per line" };

        var command = new Command("commit", "Commit the changes in IMAGE into its backing file (qemu-img commit)")
        {
            image, format, baseOption, keep, progress, speed, cache, json,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunAsync("commit", () =>
        {
            var rate = parse.GetValue(speed) is { } text ? ByteSize.Parse(text, "--rate-limit") : 0;
            var basePath = parse.GetValue(baseOption);
            return RunAsync(parse.GetValue(image)!, parse.GetValue(format), basePath, drop: parse.GetValue(keep) || basePath is not null,
                CacheModes.Parse(parse.GetValue(cache)!), rate, parse.GetValue(progress), parse.GetValue(json), cancellationToken);
        }));
        return command;
    }

    static async Task<int> RunAsync(string imagePath, string? format, string? basePath, bool drop, CacheMode cache, long speed,
        bool progress, bool json, CancellationToken cancellationToken)
    {
        // Ctrl-C and SIGTERM cancel the job, so that the images are closed (their metadata flushed), not cut off.
        using var interrupts = Interrupts.Watch(cancellationToken);
        cancellationToken = interrupts.Token;
        await using var graph = new BlockGraph();
        var top = await CacheModes.OpenAsync(graph, new ImageOpenOptions(imagePath, format, NodeName: "top"), cache, cancellationToken);
        var @base = top.Backing ?? throw new UsageException("Image does not have a backing file");
        if (basePath is not null)
        {
            @base = BlockChain.FindImage(top, basePath, includeTop: false) ?? throw new UsageException($"Did not find '{basePath}' in the backing chain of '{imagePath}'");
        }

        var manager = new JobManager();
        using var console = new JobConsole(manager, graph, json, progress);
        var options = new MirrorOptions { JobId = "commit", Speed = speed };
        var job = await MirrorJob.StartActiveCommitAsync(manager, graph, top, @base, options, cancellationToken);
        await console.RunAsync(job, "commit", cancellationToken);

        if (!drop && top.Driver is IBackingFileFormat backingFile)
        {
            await backingFile.MakeEmptyAsync(cancellationToken);
        }

        if (!json)
        {
            Console.WriteLine("Image committed.");
        }

        return 0;
    }
}
