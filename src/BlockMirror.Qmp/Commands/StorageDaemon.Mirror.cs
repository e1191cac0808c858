using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Qapi;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// blockdev-mirror and drive-mirror (qapi/block-core.json, QEMU 7.2), each with QEMU 10.1's <c>target-is-zero</c>
/// (which QEMU 10.1 gives blockdev-mirror only; README, "Deliberate differences").
/// </summary>
public sealed partial class StorageDaemon
{
    static readonly QapiBuiltin Str = QapiBuiltin.Str, Int = QapiBuiltin.Int, Bool = QapiBuiltin.Bool;

    /// <summary>QAPI's BitmapSyncMode, for Proxmox's <c>bitmap-mode</c> (QEMU 7.2 has the type for backup only).</summary>
    static readonly QapiEnum BitmapSyncModeType = new("BitmapSyncMode", ["on-success", "never", "always"]);

    static readonly QapiObject BlockdevMirrorArguments = new("q_obj_blockdev-mirror-arg",
        ("*job-id", Str), ("device", Str), ("target", Str), ("*replaces", Str), ("sync", QmpTypes.MirrorSyncMode),
        ("*bitmap", Str), ("*bitmap-mode", BitmapSyncModeType), ("*speed", Int),
        ("*granularity", QapiBuiltin.UInt32), ("*buf-size", Int), ("*on-source-error", QmpTypes.BlockdevOnError),
        ("*on-target-error", QmpTypes.BlockdevOnError), ("*filter-node-name", Str), ("*copy-mode", QmpTypes.MirrorCopyMode),
        ("*auto-finalize", Bool), ("*auto-dismiss", Bool), ("*target-is-zero", Bool),
        (WriteIntentLogMember, Bool), (ResumeMember, Bool));

    // Ours, with QAPI's prefix for downstream extensions (as __org.blockmirror_adaptive), which QEMU never uses:
    // arguments of blockdev-mirror rather than a command of their own, because a resumed job takes every other
    // argument of a new one (speed, copy-mode, filter-node-name, ...) with the same checks.
    const string WriteIntentLogMember = "*__org.blockmirror_write-intent-log";
    const string ResumeMember = "*__org.blockmirror_resume";

    /// <summary>DriveMirror: no filter-node-name (QEMU 7.2 has none for drive-mirror), but format, node-name, mode and unmap.</summary>
    static readonly QapiObject DriveMirrorArguments = new("DriveMirror",
        ("*job-id", Str), ("device", Str), ("target", Str), ("*format", Str), ("*node-name", Str), ("*replaces", Str),
        ("sync", QmpTypes.MirrorSyncMode), ("*bitmap", Str), ("*bitmap-mode", BitmapSyncModeType),
        ("*mode", new QapiEnum("NewImageMode", ["existing", "absolute-paths"])), ("*speed", Int),
        ("*granularity", QapiBuiltin.UInt32), ("*buf-size", Int), ("*on-source-error", QmpTypes.BlockdevOnError),
        ("*on-target-error", QmpTypes.BlockdevOnError), ("*unmap", Bool), ("*copy-mode", QmpTypes.MirrorCopyMode),
        ("*auto-finalize", Bool), ("*auto-dismiss", Bool), ("*target-is-zero", Bool));

    void AddMirrorCommands()
    {
        Commands.Add("blockdev-mirror", BlockdevMirrorArguments, async (arguments, cancellationToken) =>
        {
            var jobId = arguments.OptionalString("job-id");
            var device = arguments.RequireString("device");
            var target = arguments.RequireString("target");
            var options = ReadMirrorOptions(arguments, jobId ?? UnnamedDevice, drive: false);
            arguments.CheckNoneUnexpected();
            var source = FindRootNode(device);
            var targetNode = FindNode(target);
            await MirrorJob.StartAsync(Jobs, Graph, source, targetNode, options, cancellationToken).ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("drive-mirror", DriveMirrorArguments, async (arguments, cancellationToken) =>
        {
            var jobId = arguments.OptionalString("job-id");
            var device = arguments.RequireString("device");
            var target = arguments.RequireString("target");
            var format = arguments.OptionalString("format");
            var nodeName = arguments.OptionalString("node-name");
            var mode = arguments.OptionalString("mode") ?? "absolute-paths";
            var options = ReadMirrorOptions(arguments, jobId ?? UnnamedDevice, drive: true);
            arguments.CheckNoneUnexpected();
            var source = FindRootNode(device);
            var plan = PlanDriveMirrorTarget(source, target, format, nodeName, mode, ref options);

            // After the target's own checks, as QEMU meets those first (it creates the target, then checks
            // the job), but before anything is created: QEMU would leave a new image behind here.
            try
            {
                MirrorJob.CheckOptions(Jobs, source, options);
            }
            catch (JobException ex)
            {
                throw QmpException.Generic(ex.Message);
            }

            var targetNode = await OpenDriveMirrorTargetAsync(plan, source, cancellationToken).ConfigureAwait(false);
            try
            {
                await MirrorJob.StartAsync(Jobs, Graph, source, targetNode, options, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await Graph.RemoveNodeAsync(targetNode).ConfigureAwait(false);
                RemoveCreatedTarget(plan);
                throw;
            }

            return Empty;
        });
    }

    /// <summary>
    /// The device of a job that changes the graph above it (QEMU's qmp_get_root_bs): a node no other node
    /// uses. A node under a filter, a format's file or a backing file is refused, and so is one a running
    /// job has put its filter above.
    /// </summary>
    BlockNode FindRootNode(string name)
    {
        var node = FindNode(name);
        RequireRoot(node);
        return node;
    }

    static void RequireRoot(BlockNode node)
    {
        if (node.Parents.Any(e => e.ParentNode is not null))
        {
            throw QmpException.Generic("Need a root block node");
        }
    }

    /// <summary>
    /// What drive-mirror will do with its target, decided and checked before anything touches a file.
    /// </summary>
    /// <param name="Path">The target as given: a file, or another protocol's image (an NBD export).</param>
    /// <param name="File">The local file <paramref name="Path"/> names, or null for an export: that is opened (and, with absolute-paths, made a new image in place), never created, replaced or removed.</param>
    /// <param name="Format">Its format; null for an existing target whose format is probed.</param>
    /// <param name="Create">Create the file (absolute-paths), replacing one at that path.</param>
    /// <param name="Existed">A file was at the path before the command: never removed on failure.</param>
    /// <param name="BackingFile">The backing file the new image's header names (absolute path), or null.</param>
    /// <param name="BackingFormat">Its format.</param>
    sealed record DriveMirrorTarget(string Path, string? File, string? Format, string? NodeName, bool Create, bool Existed, string? BackingFile, string? BackingFormat);

    /// <summary>
    /// The checks drive-mirror makes of its target before it creates, truncates or opens it: the node-name,
    /// the format, the backing the new image would name, and that no open node uses the target's file. With
    /// the job's options (checked next) they all come before any change: QEMU creates the target before it
    /// checks the job's options (a refused request leaves a new image behind, or replaces an existing one);
    /// here a refused request changes nothing on disk.
    /// </summary>
    DriveMirrorTarget PlanDriveMirrorTarget(BlockNode source, string target, string? format, string? nodeName, string mode, ref MirrorOptions options)
    {
        if (options.Replaces is not null && nodeName is null)
        {
            throw QmpException.Generic("a node-name must be provided when replacing a named node of the graph");
        }

        if (nodeName is not null && Graph.FindNode(nodeName) is not null)
        {
            throw QmpException.Generic($"Duplicate nodes with node-name='{nodeName}'");
        }

        if (options.Sync == MirrorSyncMode.Bitmap && mode != "existing")
        {
            // A new image holds nothing, so it cannot be in sync as of when the bitmap started.
            throw QmpException.Generic("sync mode 'bitmap' needs a target that is already in sync: use mode 'existing'");
        }

        var (sync, backing) = NewTargetBacking.Choose(source, options.Sync);
        options = options with { Sync = sync };

        // absolute-paths: the target is new and gets its backing from the source's chain at the switch;
        // existing: the target's own header names its chain, opened at the switch.
        options = options with { BackingMode = mode == "existing" ? MirrorBackingMode.OpenBackingChain : MirrorBackingMode.SourceBackingChain };
        // An unknown protocol prefix, or a name its protocol refuses (a bad NBD URI), before anything else.
        ImageFiles.CheckName(target);
        var file = ImageFiles.LocalFile(target);
        var existed = file is null || File.Exists(file);
        if (mode == "existing")
        {
            if (file is not null)
            {
                RefuseFileInUse(file);
            }

            return existed
                ? new DriveMirrorTarget(target, file, format, nodeName, Create: false, Existed: true, null, null)
                : throw QmpException.Generic($"Could not open '{target}': No such file or directory");
        }

        // As QEMU (bdrv_img_create, in its order): a new image the size of the source, in the source's format
        // unless told, naming the backing's file and format in its header.
        var targetFormat = format ?? BlockChain.SkipFilters(source).Driver.DriverName;
        if (!ImageFiles.Formats.Contains(targetFormat))
        {
            throw QmpException.Generic($"Unknown file format '{targetFormat}'");
        }

        if (backing is not null && backing.Driver.FileName is null)
        {
            throw QmpException.Generic($"Cannot name the backing of the new target: node '{backing.Name}' has no file name");
        }

        if (backing?.Driver.FileName == target)
        {
            throw QmpException.Generic("Error: Trying to create an image with the same filename as the backing file");
        }

        if (backing is not null && targetFormat != DriverNames.Qcow2)
        {
            throw QmpException.Generic($"Backing file not supported for file format '{targetFormat}'");
        }

        if (targetFormat == DriverNames.Qcow2 && !Qcow2Create.FitsL1Table(source.Length, Qcow2CreateOptions.DefaultClusterSize))
        {
            throw QmpException.Generic(ImageReplacement.TooLarge(targetFormat));
        }

        if (file is not null)
        {
            RefuseFileInUse(file);
            if (Directory.Exists(file))
            {
                throw QmpException.Generic($"Could not create '{target}': Is a directory");
            }
        }

        return new DriveMirrorTarget(target, file, targetFormat, nodeName, Create: true, existed,
            backing?.Driver.FileName is { } name ? Path.GetFullPath(name) : null, backing?.Driver.DriverName);
    }

    /// <summary>
    /// A file an open node uses is never created over, truncated or mirrored onto: that is how the source itself
    /// (or its backing file) would be wiped. QEMU refuses it through its image lock, in these words.
    /// </summary>
    void RefuseFileInUse(string path)
    {
        if (Graph.FindNodeUsingFile(path) is not null)
        {
            throw QmpException.Generic("Failed to get \"write\" lock");
        }

        // Another process's image (its lock): refused in the same words.
        try
        {
            ImageFiles.CheckReplaceable(path);
        }
        catch (BlockGraphException ex)
        {
            throw QmpException.Generic(ex.Message);
        }
    }

    /// <summary>Creates the target where the plan says so, then opens it; a file this created is removed again if the open fails.</summary>
    async Task<BlockNode> OpenDriveMirrorTargetAsync(DriveMirrorTarget plan, BlockNode source, CancellationToken cancellationToken)
    {
        // The format node is opened with the source's discard mode, as QEMU opens it with the source's flags: a
        // guest's discard must do after the pivot what it did before (nothing, under qemu-storage-daemon's
        // discard=ignore). Its file is opened with discard=unmap, as QEMU's children are (ImageFiles), so the
        // mirror's unmapping zeroes punch a preallocated target as 7.2's do.
        var discard = BlockChain.SkipFilters(source).DiscardUnmaps ? FileDiscardMode.Unmap : FileDiscardMode.Ignore;
        // Without its backing: the mirror copies what the target must hold, and the backing is attached (or
        // opened) at the switch-over (QEMU opens it with BDRV_O_NO_BACKING).
        var open = new ImageOpenOptions(plan.Path, plan.Format, Discard: discard, NodeName: plan.NodeName, Qcow2: new Qcow2Options { Backing = Qcow2BackingMode.None });
        if (plan.File is null)
        {
            return await OpenExportTargetAsync(plan, open, source, cancellationToken).ConfigureAwait(false);
        }

        if (plan.Create)
        {
            // QEMU truncates an existing file and then writes the new image into it; ours is written beside it
            // and renamed over it once whole, so a creation that fails leaves the old file as it was.
            try
            {
                ImageReplacement.Replace(plan.File, plan.Format!, temporary =>
                    ImageFiles.Create(temporary, plan.Format!, source.Length, plan.BackingFile, plan.BackingFormat));
            }
            catch (Exception ex) when (ex is BlockOpenException or BlockGraphException)
            {
                throw QmpException.Generic(ex.Message);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw QmpException.Generic($"Could not create '{plan.Path}': {ex.Message}");
            }
        }

        try
        {
            var node = await ImageFiles.OpenAsync(Graph, open, cancellationToken).ConfigureAwait(false);
            await WarnIfProbedRawAsync(plan, node).ConfigureAwait(false);
            return node;
        }
        catch
        {
            RemoveCreatedTarget(plan);
            throw;
        }
    }

    /// <summary>
    /// Removes a target file this command created for a job that did not start: only a file that was not there
    /// before, and only while no open node uses it. A file that was there stays (as QEMU leaves it).
    /// </summary>
    void RemoveCreatedTarget(DriveMirrorTarget plan)
    {
        if (plan.Create && !plan.Existed && plan.File is { } file && Graph.FindNodeUsingFile(file) is null)
        {
            File.Delete(file);
        }
    }

    /// <summary>QEMU's warning for a target whose format was probed as raw, on the daemon's standard error as QEMU prints it.</summary>
    static async Task WarnIfProbedRawAsync(DriveMirrorTarget plan, BlockNode node)
    {
        if (plan.Format is null && node.Driver.DriverName == DriverNames.Raw)
        {
            await Console.Error.WriteLineAsync($"WARNING: Image format was not specified for '{plan.Path}' and probing guessed raw.\n" +
                "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
                "         Specify the 'raw' format explicitly to remove the restrictions.").ConfigureAwait(false);
        }
    }

    /// <summary>The job's options of blockdev-mirror and, with <paramref name="drive"/>, drive-mirror (which has unmap but no filter-node-name).</summary>
    static MirrorOptions ReadMirrorOptions(QmpArguments arguments, string jobId, bool drive)
    {
        var sync = arguments.RequireString("sync");
        if (!MirrorNames.TryParseSync(sync, out var syncMode))
        {
            throw QmpException.Generic($"Sync mode '{sync}' not supported");
        }

        var replaces = arguments.OptionalString("replaces");
        var speed = arguments.OptionalInt("speed") ?? 0;
        var granularity = arguments.OptionalUInt32("granularity") ?? 0;
        var bufSize = arguments.OptionalInt("buf-size") ?? 0;
        var onSource = Policy(arguments.OptionalString("on-source-error"));
        var onTarget = Policy(arguments.OptionalString("on-target-error"));
        var unmap = drive ? arguments.OptionalBool("unmap") ?? true : true;
        var writeIntentLog = !drive && (arguments.OptionalBool(WriteIntentLogMember[1..]) ?? false);
        var resume = !drive && (arguments.OptionalBool(ResumeMember[1..]) ?? false);
        var filterNodeName = drive ? null : arguments.OptionalString("filter-node-name");
        var copyMode = arguments.OptionalString("copy-mode");
        var autoFinalize = arguments.OptionalBool("auto-finalize") ?? true;
        var autoDismiss = arguments.OptionalBool("auto-dismiss") ?? true;
        var targetIsZero = arguments.OptionalBool("target-is-zero") ?? false;
        var bitmap = arguments.OptionalString("bitmap");
        var bitmapMode = arguments.OptionalString("bitmap-mode") is { } modeText
            ? MirrorNames.TryParseBitmapMode(modeText, out var parsed) ? parsed : throw new InvalidOperationException($"'{modeText}' passed the enum check but is no bitmap mode")
            : (BitmapSyncMode?)null;
        if (speed < 0)
        {
            throw QmpException.Generic("Parameter 'speed' expects a non-negative value");
        }

        return new MirrorOptions
        {
            JobId = jobId,
            Sync = syncMode,
            Speed = speed,
            Granularity = granularity,
            BufSize = bufSize,
            OnSourceError = onSource,
            OnTargetError = onTarget,
            Unmap = unmap,
            FilterNodeName = filterNodeName,
            Replaces = replaces,
            AutoFinalize = autoFinalize,
            AutoDismiss = autoDismiss,
            CopyMode = CopyMode(copyMode),
            TargetIsZero = targetIsZero,
            Bitmap = bitmap,
            BitmapMode = bitmapMode,
            WriteIntentLog = writeIntentLog,
            Resume = resume,
        };
    }

    /// <summary>A copy mode as QMP names it; absent is <c>background</c>.</summary>
    static MirrorCopyMode CopyMode(string? text) =>
        text is null ? MirrorCopyMode.Background
        : MirrorNames.TryParseCopyMode(text, out var mode) ? mode
        : throw new InvalidOperationException($"'{text}' passed the enum check but is no copy mode");

    /// <summary>
    /// A policy as QMP names it; absent is <c>report</c>. <c>auto</c> stays <c>auto</c>: for a job QEMU treats it as
    /// <c>enospc</c> (stop on ENOSPC, report anything else), not as <c>report</c>.
    /// </summary>
    static BlockdevOnError Policy(string? text) =>
        text is null ? BlockdevOnError.Report
        : ErrorPolicy.TryParse(text, out var policy) ? policy
        : throw new InvalidOperationException($"'{text}' passed the enum check but is no policy");
}
