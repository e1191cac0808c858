using BlockMirror.Block.Drivers;
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
            if (nodeName is not null && Graph.FindNode(nodeName) is not null)
            {
                throw QmpException.Generic($"node-name '{nodeName}' is already in use");
            }

            format ??= mode == "existing" ? null : source.Driver.DriverName;
            var created = false;
            if (mode == "absolute-paths")
            {
                // As QEMU: a new image the size of the source, replacing any file of that name.
                File.Delete(target);
                ImageFiles.Create(target, format ?? ImageFiles.GuessFormat(target), source.Length);
                created = true;
            }
            else if (!File.Exists(target))
            {
                throw QmpException.Generic($"Could not open '{target}': No such file or directory");
            }

            BlockNode targetNode;
            try
            {
                targetNode = await ImageFiles.OpenAsync(Graph, new ImageOpenOptions(target, format, NodeName: nodeName), cancellationToken).ConfigureAwait(false);
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
        if (replaces is not null)
        {
            throw QmpException.Generic("'replaces' is not supported yet");
        }

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
            AutoFinalize = autoFinalize,
            AutoDismiss = autoDismiss,
        };
    }

    static BlockdevOnError Policy(string? text) =>
        text is null or "auto" ? BlockdevOnError.Report : ErrorPolicy.TryParse(text, out var policy) ? policy : BlockdevOnError.Report;
}
