using System.CommandLine;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Interop;
using BlockMirror.Cli.Ui;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror mirror SOURCE TARGET</c>: runs a mirror job between two image files until it is in
/// sync, then completes it. Creates a missing target (sparse, same size and format; with <c>--sync top</c> or
/// <c>none</c> backed as drive-mirror backs it), and removes it again if the mirror is refused, fails or is
/// interrupted.
/// </summary>
static class MirrorCommand
{
    public static Command Create()
    {
        var source = new Argument<string>("SOURCE") { Description = "Source image file" };
        var target = new Argument<string>("TARGET") { Description = "Target image file (created if missing)" };
        var format = new Option<string?>("--format", "-f") { Description = "Source format (default: probed from its content)" };
        var targetFormat = new Option<string?>("--target-format", "-O") { Description = "Target format (default: an existing target's is probed; a new one's is qcow2 for .qcow2, raw for .raw, else the source's)" };
        var sync = new Option<string>("--sync") { Description = "What to copy: full, top or none", DefaultValueFactory = _ => "full" };
        var granularity = new Option<string?>("--granularity") { Description = "Dirty-tracking granularity, e.g. 64K (default: target cluster size, 64K)" };
        var bufSize = new Option<string?>("--buf-size") { Description = "Copy buffer size, e.g. 16M" };
        var speed = new Option<string?>("--speed") { Description = "Bytes per second, e.g. 100M (default: unlimited)" };
        var onSourceError = new Option<string>("--on-source-error") { Description = "report or ignore", DefaultValueFactory = _ => "report" };
        var onTargetError = new Option<string>("--on-target-error") { Description = "report or ignore", DefaultValueFactory = _ => "report" };
        var copyMode = new Option<string>("--copy-mode") { Description = CopyModes.Help, DefaultValueFactory = _ => "background" };
        var noUnmap = new Option<bool>("--no-unmap") { Description = "Write zeroes instead of deallocating zero ranges on the target" };
        var targetIsZero = new Option<bool>("--target-is-zero")
        {
            Description = "An existing TARGET already reads as zeroes: zero ranges of SOURCE are not written to it, so a preallocated target keeps " +
                "its blocks and is not rewritten (QEMU 10.1's target-is-zero). Taken on trust: bytes TARGET holds stay where SOURCE reads zeroes",
        };
        var cache = new Option<string>("--cache", "-t")
        {
            Description = "How both images are opened: none (O_DIRECT), writeback (page cache), or auto (none where the file allows it)",
            DefaultValueFactory = _ => "auto",
        };
        var bitmap = new Option<string?>("--bitmap") { Description = "Incremental re-sync: copy only what this dirty bitmap of SOURCE marks, onto an existing TARGET that was in sync when the bitmap started (sync=bitmap)" };
        var bitmapMode = new Option<string?>("--bitmap-mode") { Description = "What --bitmap keeps at the end: on-success (default: cleared once in sync), always, or never (left as it is)" };
        var writeIntentLog = new Option<bool>("--write-intent-log") { Description = "Keep the job's dirty state in a write-intent log beside SOURCE (SOURCE.blockmirror-wil), so that a crashed mirror can be resumed" };
        var resume = new Option<bool>("--resume") { Description = "Continue a crashed mirror from SOURCE's write-intent log onto the same existing TARGET, copying only what the log marks" };
        var json = new Option<bool>("--json") { Description = "Print QMP-style JSON events and progress, one object per line" };

        var command = new Command("mirror", "Mirror SOURCE onto TARGET, then complete (pivot) once they are in sync")
        {
            source, target, format, targetFormat, sync, granularity, bufSize, speed, copyMode, onSourceError, onTargetError, noUnmap, targetIsZero, bitmap, bitmapMode,
            writeIntentLog, resume, cache, json,
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
                CopyMode = CopyModes.Parse(parse.GetValue(copyMode)!),
                OnSourceError = ParsePolicy(parse.GetValue(onSourceError)!, "--on-source-error"),
                OnTargetError = ParsePolicy(parse.GetValue(onTargetError)!, "--on-target-error"),
                Unmap = !parse.GetValue(noUnmap),
                TargetIsZero = parse.GetValue(targetIsZero),
                WriteIntentLog = parse.GetValue(writeIntentLog),
                Resume = parse.GetValue(resume),
            };
            options = WithBitmap(options, parse.GetValue(bitmap), parse.GetValue(bitmapMode), parse.GetResult(sync) is { Implicit: false });
            return RunAsync(parse.GetValue(source)!, parse.GetValue(target)!, parse.GetValue(format), parse.GetValue(targetFormat),
                CacheModes.Parse(parse.GetValue(cache)!), options, parse.GetValue(json), cancellationToken);
        }));
        return command;
    }

    /// <summary>
    /// <c>--bitmap</c> is <c>sync=bitmap</c> with a bitmap-mode (on-success unless told: QMP requires one, a command
    /// line may choose); <c>--bitmap-mode</c> alone is the job's own refusal.
    /// </summary>
    static MirrorOptions WithBitmap(MirrorOptions options, string? bitmap, string? mode, bool syncGiven)
    {
        BitmapSyncMode? bitmapMode = mode is null ? null
            : MirrorNames.TryParseBitmapMode(mode, out var parsed) ? parsed
            : throw new UsageException($"--bitmap-mode: unknown mode '{mode}' (expected on-success, always or never)");
        if (bitmap is null)
        {
            return options with { BitmapMode = bitmapMode };
        }

        if (syncGiven && options.Sync != MirrorSyncMode.Bitmap)
        {
            throw new UsageException($"--bitmap copies what the bitmap marks (sync bitmap); it cannot be combined with --sync {options.Sync.ToWireName()}");
        }

        return options with { Sync = MirrorSyncMode.Bitmap, Bitmap = bitmap, BitmapMode = bitmapMode ?? BitmapSyncMode.OnSuccess };
    }

    static long ParseSize(string? text, string option) => text is null ? 0 : ByteSize.Parse(text, option);

    static MirrorSyncMode ParseSync(string text) =>
        MirrorNames.TryParseSync(text, out var mode) ? mode : throw new UsageException($"unknown sync mode '{text}' (expected full, top, none or bitmap)");

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
        if (sourcePath == targetPath || (ImageFiles.LocalFile(sourcePath) is { } sourceFile && ImageFiles.LocalFile(targetPath) is { } targetFile &&
            (Path.GetFullPath(sourceFile) == Path.GetFullPath(targetFile) || FileStatus.AreSame(sourceFile, targetFile) == true)))
        {
            throw new UsageException("SOURCE and TARGET are the same file");
        }

        // Ctrl-C and SIGTERM cancel the job, so that the target is closed and, if the command made it, removed.
        using var interrupts = Interrupts.Watch(cancellationToken);
        cancellationToken = interrupts.Token;
        await using var graph = new BlockGraph();
        // A null format probes the content, as qemu-img does: a qcow2 named disk.img is a qcow2.
        if ((options.Sync == MirrorSyncMode.Bitmap || options.Resume) && ImageFiles.LocalFile(targetPath) is { } localTarget && !File.Exists(localTarget))
        {
            throw new UsageException(options.Resume
                ? $"--resume: TARGET '{targetPath}' does not exist; a resumed mirror continues onto the target the crashed one wrote"
                : $"--bitmap: TARGET '{targetPath}' does not exist; an incremental re-sync copies onto a target that was in sync when the bitmap started");
        }

        // Read-only, unless the job is to change a bitmap of the source at its end (stored in the image at close).
        var sourceReadOnly = options.Sync != MirrorSyncMode.Bitmap || options.BitmapMode == BitmapSyncMode.Never;
        var source = await CacheModes.OpenAsync(graph, new ImageOpenOptions(sourcePath, format, ReadOnly: sourceReadOnly, NodeName: "source"), cache, cancellationToken);
        var target = await MirrorTarget.PlanAsync(source, targetPath, targetFormat, options.Sync, cancellationToken);
        options = options with { Sync = target.Sync };
        // Made where the path leads: through a symbolic link that names no file yet, the file it names (as
        // qemu-img convert makes it); that file, not the link, is what a failure removes again.
        var created = target.Exists ? null : ImageReplacement.FinalTarget(ImageFiles.LocalFile(targetPath)!);
        if (created is not null)
        {
            ImageFiles.Create(created, target.Format!, source.Length, target.BackingFile, target.BackingFormat);
        }

        var manager = new JobManager();
        using var console = new JobConsole(manager, graph, json);
        var started = false;
        try
        {
            // A new target opens with the backing file it was given, so that it reads what the source reads
            // where sync=top copies nothing, and its zeroes are written as zeroes over that backing.
            var targetNode = await CacheModes.OpenAsync(graph, new ImageOpenOptions(targetPath, target.OpenFormat, NodeName: "target"), cache, cancellationToken);
            if (target.Remote && options.Sync == MirrorSyncMode.Top)
            {
                // An export is looked at once it is open (one connection): it must read the rest from its own backing.
                MirrorTarget.RequireOwnBacking(targetPath, targetNode.Driver.BackingFileName, source);
            }

            // An export keeps its size (nothing resizes it): one that differs is refused before a byte is written.
            MirrorJob.CheckSameSize(source, targetNode);
            var job = await MirrorJob.StartAsync(manager, graph, source, targetNode, options, cancellationToken);
            started = true;
            // Once the job runs, not at open: a refusal before it stays one line, and only the job writes.
            if (target.ProbedRaw(targetNode))
            {
                Console.Error.WriteLine(target.ProbeWarning);
            }

            var final = await console.RunAsync(job, "mirror", cancellationToken);
            if (!json)
            {
                Console.WriteLine($"mirrored {ByteSize.Format(final.Offset)} from {sourcePath} to {targetPath}");
            }

            return 0;
        }
        catch when (!target.Exists)
        {
            // Refused by the job (granularity, buf-size, O_DIRECT alignment are checked against the target),
            // failed or interrupted: a target the command created goes again. The graph is closed first (its
            // close flushes the target's metadata), so nothing writes to the file once its name is gone.
            await graph.DisposeAsync();
            File.Delete(created!);
            throw;
        }
        catch (IOException ex) when (started)
        {
            throw new IOException($"{ex.Message}; TARGET '{targetPath}' existed before and was kept: it holds a partial copy", ex);
        }
        catch (OperationCanceledException) when (started)
        {
            throw new InterruptedException($"{Interrupts.Word}; TARGET '{targetPath}' existed before and was kept: it holds a partial copy");
        }
    }
}
