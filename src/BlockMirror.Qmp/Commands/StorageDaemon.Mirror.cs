using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>blockdev-mirror and drive-mirror (qapi/block-core.json, QEMU 7.2).</summary>
public sealed partial class StorageDaemon
{
    static readonly string[] SyncModes = ["top", "full", "none", "incremental", "bitmap"];
    static readonly string[] ErrorPolicies = ["report", "ignore", "enospc", "stop", "auto"];

    void AddMirrorCommands()
    {
        Commands.Add("blockdev-mirror", async (arguments, cancellationToken) =>
        {
            var jobId = arguments.OptionalString("job-id");
            var device = arguments.RequireString("device");
            var target = arguments.RequireString("target");
            var options = ReadMirrorOptions(arguments, jobId ?? device, allowUnmap: false);
            arguments.CheckNoneUnexpected();
            var source = FindNode(device);
            var targetNode = FindNode(target);
            await MirrorJob.StartAsync(Jobs, Graph, source, targetNode, options, cancellationToken).ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("drive-mirror", async (arguments, cancellationToken) =>
        {
            var jobId = arguments.OptionalString("job-id");
            var device = arguments.RequireString("device");
            var target = arguments.RequireString("target");
            var format = arguments.OptionalString("format");
            var nodeName = arguments.OptionalString("node-name");
            var mode = arguments.OptionalEnum("mode", "existing", "absolute-paths") ?? "absolute-paths";
            var options = ReadMirrorOptions(arguments, jobId ?? device, allowUnmap: true);
            arguments.CheckNoneUnexpected();
            var source = FindNode(device);
            if (options.Replaces is not null && nodeName is null)
            {
                throw QmpException.Generic("a node-name must be provided when replacing a named node of the graph");
            }

            if (nodeName is not null && Graph.FindNode(nodeName) is not null)
            {
                throw QmpException.Generic($"node-name '{nodeName}' is already in use");
            }

            // What the new target is backed by (QEMU's qmp_drive_mirror): sync=top shares the source's
            // backing, sync=none is backed by the source itself, sync=full stands alone.
            var targetBacking = SkipFilters(source).Backing;
            if (targetBacking is null && options.Sync == MirrorSyncMode.Top)
            {
                options = options with { Sync = MirrorSyncMode.Full };
            }

            if (options.Sync == MirrorSyncMode.None)
            {
                targetBacking = source;
            }

            if (options.Sync == MirrorSyncMode.Full)
            {
                targetBacking = null;
            }

            // absolute-paths: the target is new and gets its backing from the source's chain at the switch;
            // existing: the target's own header names its chain, opened at the switch.
            options = options with { BackingMode = mode == "existing" ? MirrorBackingMode.OpenBackingChain : MirrorBackingMode.SourceBackingChain };
            format ??= mode == "existing" ? null : SkipFilters(source).Driver.DriverName;
            var created = false;
            if (mode == "absolute-paths")
            {
                // As QEMU: a new image the size of the source, replacing any file of that name, naming the
                // backing's file and format in its header.
                var backing = targetBacking is null ? null : SkipFilters(targetBacking);
                if (backing is not null && backing.Driver.FileName is null)
                {
                    throw QmpException.Generic($"Cannot name the backing of the new target: node '{backing.Name}' has no file name");
                }

                // QEMU's bdrv_img_create refuses a bad format before it touches anything: a refused request
                // must not cost the user the file already at the target's path.
                var targetFormat = format ?? ImageFiles.GuessFormat(target);
                if (!ImageFiles.Formats.Contains(targetFormat))
                {
                    throw QmpException.Generic($"Unknown file format '{targetFormat}'");
                }

                if (backing is not null && targetFormat != Qcow2Driver.Name)
                {
                    throw QmpException.Generic($"Backing file not supported for file format '{targetFormat}'");
                }

                File.Delete(target);
                try
                {
                    ImageFiles.Create(target, targetFormat, source.Length,
                        backing?.Driver.FileName is { } name ? Path.GetFullPath(name) : null, backing?.Driver.DriverName);
                }
                catch (BlockOpenException ex)
                {
                    throw QmpException.Generic(ex.Message);
                }

                created = true;
            }
            else if (!File.Exists(target))
            {
                throw QmpException.Generic($"Could not open '{target}': No such file or directory");
            }

            BlockNode targetNode;
            try
            {
                // Without its backing: the mirror copies what the target must hold, and the backing is
                // attached (or opened) at the switch-over (QEMU opens it with BDRV_O_NO_BACKING). With the
                // source's discard mode, as QEMU opens it with the source's flags: a guest's discard must do
                // after the pivot what it did before (nothing, under qemu-storage-daemon's discard=ignore).
                var discard = SkipFilters(source).Driver.Capabilities.CanDiscard ? FileDiscardMode.Unmap : FileDiscardMode.Ignore;
                targetNode = await ImageFiles.OpenAsync(Graph, new ImageOpenOptions(target, format, Discard: discard, NodeName: nodeName,
                    Qcow2: new Qcow2Options { Backing = Qcow2BackingMode.None }), cancellationToken).ConfigureAwait(false);
            }
            catch when (created)
            {
                File.Delete(target);
                throw;
            }

            try
            {
                await MirrorJob.StartAsync(Jobs, Graph, source, targetNode, options, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await Graph.RemoveNodeAsync(targetNode).ConfigureAwait(false);
                if (created)
                {
                    File.Delete(target);
                }

                throw;
            }

            return Empty;
        });
    }

    static MirrorOptions ReadMirrorOptions(QmpArguments arguments, string jobId, bool allowUnmap)
    {
        var sync = arguments.OptionalEnum("sync", SyncModes) ?? throw QmpException.Generic("Parameter 'sync' is missing");
        if (!MirrorNames.TryParseSync(sync, out var syncMode))
        {
            throw QmpException.Generic($"Sync mode '{sync}' not supported");
        }

        var replaces = arguments.OptionalString("replaces");
        var speed = arguments.OptionalInt("speed") ?? 0;
        var granularity = arguments.OptionalInt("granularity") ?? 0;
        var bufSize = arguments.OptionalInt("buf-size") ?? 0;
        var onSource = Policy(arguments.OptionalEnum("on-source-error", ErrorPolicies));
        var onTarget = Policy(arguments.OptionalEnum("on-target-error", ErrorPolicies));
        var unmap = allowUnmap ? arguments.OptionalBool("unmap") ?? true : true;
        var filterNodeName = arguments.OptionalString("filter-node-name");
        var copyMode = arguments.OptionalEnum("copy-mode", "background", "write-blocking");
        var autoFinalize = arguments.OptionalBool("auto-finalize") ?? true;
        var autoDismiss = arguments.OptionalBool("auto-dismiss") ?? true;
        if (copyMode == "write-blocking")
        {
            throw QmpException.Generic("copy-mode 'write-blocking' is not supported yet; use 'background'");
        }

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
        };
    }

    /// <summary>The first node at or below <paramref name="node"/> that is not a filter (QEMU's bdrv_skip_filters).</summary>
    static BlockNode SkipFilters(BlockNode node)
    {
        while (node.FilteredChild is { } child)
        {
            node = child.Node;
        }

        return node;
    }

    /// <summary>
    /// A policy as QMP names it; absent is <c>report</c>. <c>auto</c> stays <c>auto</c>: for a job QEMU treats it as
    /// <c>enospc</c> (stop on ENOSPC, report anything else), not as <c>report</c>.
    /// </summary>
    static BlockdevOnError Policy(string? text) =>
        text is null ? BlockdevOnError.Report
        : ErrorPolicy.TryParse(text, out var policy) ? policy
        : throw new InvalidOperationException($"'{text}' passed the enum check but is no policy");
}
