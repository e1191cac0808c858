using System.CommandLine;
using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Interop;
using BlockMirror.Cli.Ui;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Qmp.Events;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror mirror SOURCE TARGET</c>: runs a mirror job between two image files until it is in
/// sync, then completes it. Creates a missing target (sparse, same size and format).
/// </summary>
static class MirrorCommand
{
    public static Command Create()
    {
        var source = new Argument<string>("SOURCE") { Description = "Source image file" };
        var target = new Argument<string>("TARGET") { Description = "Target image file (created if missing)" };
        var format = new Option<string?>("--format", "-f") { Description = "Source format (default: by extension, else raw)" };
        var targetFormat = new Option<string?>("--target-format", "-O") { Description = "Target format (default: by extension, else the source's)" };
        var sync = new Option<string>("--sync") { Description = "What to copy: full, top or none", DefaultValueFactory = _ => "full" };
        var granularity = new Option<string?>("--granularity") { Description = "Dirty-tracking granularity, e.g. 64K (default: target cluster size, 64K)" };
        var bufSize = new Option<string?>("--buf-size") { Description = "Copy buffer size, e.g. 16M" };
        var speed = new Option<string?>("--speed") { Description = "Bytes per second, e.g. 100M (default: unlimited)" };
        var onSourceError = new Option<string>("--on-source-error") { Description = "report or ignore", DefaultValueFactory = _ => "report" };
        var onTargetError = new Option<string>("--on-target-error") { Description = "report or ignore", DefaultValueFactory = _ => "report" };
        var noUnmap = new Option<bool>("--no-unmap") { Description = "Write zeroes instead of deallocating zero ranges on the target" };
        var cache = new Option<string>("--cache", "-t")
        {
            Description = "How both images are opened: none (O_DIRECT), writeback (page cache), or auto (none where the file allows it)",
            DefaultValueFactory = _ => "auto",
        };
        var json = new Option<bool>("--json") { Description = "Print QMP-style JSON events and progress, one object per line" };

        var command = new Command("mirror", "Mirror SOURCE onto TARGET, then complete (pivot) once they are in sync")
        {
            source, target, format, targetFormat, sync, granularity, bufSize, speed, onSourceError, onTargetError, noUnmap, cache, json,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunAsync("mirror", () =>
        {
            var options = new MirrorOptions
            {
                JobId = "mirror",
                Sync = ParseSync(parse.GetValue(sync)!),
                Granularity = ParseSize(parse.GetValue(granularity), "--granularity"),
                BufSize = ParseSize(parse.GetValue(bufSize), "--buf-size"),
                Speed = ParseSize(parse.GetValue(speed), "--speed"),
                OnSourceError = ParsePolicy(parse.GetValue(onSourceError)!, "--on-source-error"),
                OnTargetError = ParsePolicy(parse.GetValue(onTargetError)!, "--on-target-error"),
                Unmap = !parse.GetValue(noUnmap),
            };
            return RunAsync(parse.GetValue(source)!, parse.GetValue(target)!, parse.GetValue(format), parse.GetValue(targetFormat),
                ParseCache(parse.GetValue(cache)!), options, parse.GetValue(json), cancellationToken);
        }));
        return command;
    }

    static long ParseSize(string? text, string option) => text is null ? 0 : ByteSize.Parse(text, option);

    static CacheMode ParseCache(string text) => text switch
    {
        "auto" => CacheMode.Auto,
        "none" => CacheMode.None,
        "writeback" => CacheMode.Writeback,
        _ => throw new UsageException($"--cache: unknown cache mode '{text}' (expected auto, none or writeback)"),
    };

    static MirrorSyncMode ParseSync(string text) =>
        MirrorNames.TryParseSync(text, out var mode) ? mode : throw new UsageException($"unknown sync mode '{text}' (expected full, top or none)");

    /// <summary>
    /// Only report and ignore: stop (and enospc, which may stop) pause the job until someone resumes it,
    /// and a one-shot command has no monitor to resume from. `blockmirror serve` offers them over QMP.
    /// </summary>
    static BlockdevOnError ParsePolicy(string text, string option) => text switch
    {
        "report" => BlockdevOnError.Report,
        "ignore" => BlockdevOnError.Ignore,
        "stop" or "enospc" => throw new UsageException(
            $"{option} {text}: a stopped job must be resumed over QMP; use report or ignore here, or run the job in 'blockmirror serve'"),
        _ => throw new UsageException($"{option}: unknown error policy '{text}' (expected report or ignore)"),
    };

    static async Task<int> RunAsync(string sourcePath, string targetPath, string? format, string? targetFormat, CacheMode cache,
        MirrorOptions options, bool json, CancellationToken cancellationToken)
    {
        // A file mirrored onto itself would be zeroed (the target does not read as zeroes) and lose its
        // data: compare the files, not only the paths, so links to the source are refused too.
        if (Path.GetFullPath(sourcePath) == Path.GetFullPath(targetPath) || FileStatus.AreSame(sourcePath, targetPath) == true)
        {
            throw new UsageException("SOURCE and TARGET are the same file");
        }

        await using var graph = new BlockGraph();
        var source = await CacheModes.OpenAsync(graph, new ImageOpenOptions(sourcePath, format, ReadOnly: true, NodeName: "source"), cache, cancellationToken);
        if (Directory.Exists(targetPath))
        {
            throw new UsageException($"TARGET '{targetPath}' is a directory");
        }

        targetFormat ??= File.Exists(targetPath) || Path.HasExtension(targetPath) ? ImageFiles.GuessFormat(targetPath) : source.Driver.DriverName;
        var createdTarget = false;
        if (!File.Exists(targetPath))
        {
            ImageFiles.Create(targetPath, targetFormat, source.Length);
            createdTarget = true;
        }

        var manager = new JobManager();
        var events = new List<JobEvent>();
        using var subscription = manager.Events.Subscribe(e =>
        {
            lock (events)
            {
                events.Add(e);
            }
        });

        MirrorJob job;
        try
        {
            var target = await CacheModes.OpenAsync(graph, new ImageOpenOptions(targetPath, targetFormat, NodeName: "target"), cache, cancellationToken);
            job = await MirrorJob.StartAsync(manager, graph, source, target, options, cancellationToken);
        }
        catch when (createdTarget)
        {
            // The job validates its options against the target (granularity, buf-size, O_DIRECT
            // alignment), so a refusal comes after the target was created: remove it, so a refused
            // mirror leaves nothing behind. Unlinking a file that is still open is fine on POSIX.
            File.Delete(targetPath);
            throw;
        }

        using var onCancel = cancellationToken.Register(() => _ = job.CancelAsync(force: true));
        var progress = ProgressLine.ForConsole();
        var rate = new RateMeter(TimeSpan.FromSeconds(3));
        var completed = false;
        while (!job.Finished.IsCompleted)
        {
            List<JobEvent> batch;
            lock (events)
            {
                batch = [.. events];
                events.Clear();
            }

            foreach (var e in batch)
            {
                if (json)
                {
                    Console.WriteLine(QmpEventWriter.ToJson(e));
                }

                if (e is BlockJobReadyEvent && !completed)
                {
                    // A command-line mirror has no one to wait for: pivot as soon as the copy is in sync.
                    completed = true;
                    job.Complete();
                }
            }

            var info = job.GetInfo();
            if (json)
            {
                WriteProgressJson(info, job.DirtyBytes);
            }
            else
            {
                progress.Update(info.Offset, info.Len, rate.Sample(info.Offset), info.Status.ToWireName());
            }

            await Task.WhenAny(job.Finished, Task.Delay(json ? 1000 : 200, CancellationToken.None));
        }

        foreach (var e in events)
        {
            if (json)
            {
                Console.WriteLine(QmpEventWriter.ToJson(e));
            }
        }

        var final = job.GetInfo();
        if (!json)
        {
            progress.Update(final.Offset, Math.Max(final.Len, final.Offset), rate.Sample(final.Offset), job.Error is null ? "completed" : "failed", force: true);
            progress.Finish();
        }

        if (job.Error is not null)
        {
            throw new IOException($"the mirror failed: {job.Failure?.Message ?? job.Error}");
        }

        cancellationToken.ThrowIfCancellationRequested();

        if (!json)
        {
            Console.WriteLine($"mirrored {ByteSize.Format(final.Offset)} from {sourcePath} to {targetPath}");
        }

        return 0;
    }

    static void WriteProgressJson(BlockJobInfo info, long dirty)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("event", "PROGRESS");
            writer.WriteStartObject("data");
            writer.WriteString("device", info.Device);
            writer.WriteString("status", info.Status.ToWireName());
            writer.WriteNumber("offset", info.Offset);
            writer.WriteNumber("len", info.Len);
            writer.WriteNumber("dirty", dirty);
            writer.WriteEndObject();
            QmpEventWriter.WriteTimestamp(writer, DateTimeOffset.UtcNow);
            writer.WriteEndObject();
        }

        Console.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
    }
}
