using BlockMirror.Block.Graph;
using BlockMirror.Block.Qapi;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Commit;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// block-commit (qapi/block-core.json, QEMU 7.2): with top the active layer, an active commit (a mirror
/// into the base that completes on request); with top below it, an intermediate commit that completes by
/// itself. Lookups and error texts follow QEMU's qmp_block_commit, in its order, so a client (libvirt)
/// that probes by error class sees the same answers.
/// </summary>
public sealed partial class StorageDaemon
{
    static readonly QapiObject BlockCommitArguments = new("q_obj_block-commit-arg",
        ("*job-id", QapiBuiltin.Str), ("device", QapiBuiltin.Str), ("*base-node", QapiBuiltin.Str), ("*base", QapiBuiltin.Str),
        ("*top-node", QapiBuiltin.Str), ("*top", QapiBuiltin.Str), ("*backing-file", QapiBuiltin.Str), ("*speed", QapiBuiltin.Int),
        ("*on-error", QmpTypes.BlockdevOnError), ("*filter-node-name", QapiBuiltin.Str), ("*auto-finalize", QapiBuiltin.Bool),
        ("*auto-dismiss", QapiBuiltin.Bool));

    void AddCommitCommands()
    {
        Commands.Add("block-commit", BlockCommitArguments, async (arguments, cancellationToken) =>
        {
            var jobId = arguments.OptionalString("job-id");
            var device = arguments.RequireString("device");
            var baseNode = arguments.OptionalString("base-node");
            var baseFile = arguments.OptionalString("base");
            var topNode = arguments.OptionalString("top-node");
            var topFile = arguments.OptionalString("top");
            var backingFile = arguments.OptionalString("backing-file");
            var speed = arguments.OptionalInt("speed") ?? 0;
            var onError = Policy(arguments.OptionalString("on-error"));
            var filterNodeName = arguments.OptionalString("filter-node-name");
            var autoFinalize = arguments.OptionalBool("auto-finalize") ?? true;
            var autoDismiss = arguments.OptionalBool("auto-dismiss") ?? true;
            arguments.CheckNoneUnexpected();

            // The device first: libvirt tells versions apart by this DeviceNotFound.
            var bs = Graph.FindNode(device) ?? throw new QmpException("DeviceNotFound", $"Device '{device}' not found");
            RequireRoot(bs);

            var top = bs;
            if (topNode is not null && topFile is not null)
            {
                throw QmpException.Generic("'top-node' and 'top' are mutually exclusive");
            }
            else if (topNode is not null)
            {
                // A node name only, never a device (QEMU's bdrv_lookup_bs(NULL, top_node)): hence device=''.
                top = Graph.GetNode(topNode);
                if (!BlockChain.Contains(bs, top))
                {
                    throw QmpException.Generic($"'{topNode}' is not in this backing file chain");
                }
            }
            else if (topFile is not null)
            {
                top = BlockChain.FindImage(bs, topFile, includeTop: true) ?? throw QmpException.Generic($"Top image file {topFile} not found");
            }

            BlockNode @base;
            if (baseNode is not null && baseFile is not null)
            {
                throw QmpException.Generic("'base-node' and 'base' are mutually exclusive");
            }
            else if (baseNode is not null)
            {
                @base = Graph.GetNode(baseNode);
                if (!BlockChain.Contains(top, @base))
                {
                    throw QmpException.Generic($"'{baseNode}' is not in this backing file chain");
                }
            }
            else if (baseFile is not null)
            {
                @base = BlockChain.FindImage(top, baseFile, includeTop: false) ?? throw QmpException.Generic($"Can't find '{baseFile}' in the backing chain");
            }
            else
            {
                @base = BlockChain.Layers(top).Last();
            }

            if (ReferenceEquals(top, @base))
            {
                throw QmpException.Generic("cannot commit an image into itself");
            }

            if (speed < 0)
            {
                throw QmpException.Generic("Parameter 'speed' expects a non-negative value");
            }

            var active = ReferenceEquals(BlockChain.SkipFilters(top), BlockChain.SkipFilters(bs));
            if (active)
            {
                if (backingFile is not null)
                {
                    throw QmpException.Generic("'backing-file' specified, but 'top' is the active layer");
                }

                var options = new MirrorOptions
                {
                    JobId = jobId ?? UnnamedDevice,
                    Speed = speed,
                    OnSourceError = onError,
                    OnTargetError = onError,
                    FilterNodeName = filterNodeName,
                    AutoFinalize = autoFinalize,
                    AutoDismiss = autoDismiss,
                };
                await MirrorJob.StartActiveCommitAsync(Jobs, Graph, top, @base, options, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                var options = new CommitOptions
                {
                    JobId = jobId ?? UnnamedDevice,
                    Speed = speed,
                    OnError = onError,
                    BackingFile = backingFile,
                    FilterNodeName = filterNodeName,
                    AutoFinalize = autoFinalize,
                    AutoDismiss = autoDismiss,
                };
                await CommitJob.StartAsync(Jobs, Graph, top, @base, options, cancellationToken).ConfigureAwait(false);
            }

            return Empty;
        });
    }
}
