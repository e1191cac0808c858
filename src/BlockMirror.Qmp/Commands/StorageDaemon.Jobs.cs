using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Qmp.Commands;

/// <summary>The block-job-* and job-* verbs, query-block-jobs, query-jobs.</summary>
public sealed partial class StorageDaemon
{
    void AddJobCommands()
    {
        // block-job-*: the job is named by "device" (its id), and a missing one is DeviceNotActive.
        Commands.Add("block-job-set-speed", new QapiObject("q_obj_block-job-set-speed-arg", ("device", QapiBuiltin.Str), ("speed", QapiBuiltin.Int)), (arguments, _) =>
        {
            var device = arguments.RequireString("device");
            var speed = arguments.RequireInt("speed");
            arguments.CheckNoneUnexpected();
            var job = FindBlockJob(Jobs, device);
            if (speed < 0)
            {
                throw Protocol.QmpException.Generic("Parameter 'speed' expects a non-negative value");
            }

            job.SetSpeed(speed);
            return ValueTask.FromResult(Empty);
        });
        Commands.Add("block-job-cancel", new QapiObject("q_obj_block-job-cancel-arg", ("device", QapiBuiltin.Str), ("*force", QapiBuiltin.Bool)), async (arguments, _) =>
        {
            var device = arguments.RequireString("device");
            var force = arguments.OptionalBool("force") ?? false;
            arguments.CheckNoneUnexpected();
            var job = FindBlockJob(Jobs, device);

            // A soft cancel waits for the job to finish its work, which a paused job never does; QEMU
            // refuses it rather than leave the cancel hanging (job-cancel always forces, so it has no such check).
            if (job.IsUserPaused && !force)
            {
                throw Protocol.QmpException.Generic($"The block job for device '{device}' is currently paused");
            }

            await job.CancelAsync(force).ConfigureAwait(false);
            return Empty;
        });
        // QEMU 8.2's BlockJobChangeOptions: a union on "type" whose only branch with members is mirror.
        var change = QapiObject.Union("BlockJobChangeOptions", [("id", QapiBuiltin.Str), ("type", QmpTypes.JobType)], "type",
            new QapiVariant("mirror", new QapiObject("BlockJobChangeOptionsMirror", ("copy-mode", QmpTypes.MirrorCopyMode))));
        Commands.Add("block-job-change", change, (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            var type = arguments.RequireString("type");
            MirrorCopyMode? mode = type == "mirror" ? CopyMode(arguments.RequireString("copy-mode")) : null;

            arguments.CheckNoneUnexpected();
            var job = FindBlockJob(Jobs, id);
            if (job.Type.ToWireName() != type)
            {
                // QEMU 9.1's check: 8.2 went on and read the mirror branch of whatever job it found.
                throw Protocol.QmpException.Generic($"Job '{id}' is '{job.Type.ToWireName()}' job, not '{type}'");
            }

            if (job is MirrorJob { Type: JobType.Mirror } mirror && mode is { } copyMode)
            {
                mirror.ChangeCopyMode(copyMode);
            }
            else
            {
                // An active commit is a mirror inside, but QEMU gives its job no change (and no copy mode).
                job.RefuseChange();
            }

            return ValueTask.FromResult(Empty);
        });
        AddVerb("block-job-pause", "device", block: true, job => job.Pause());
        AddVerb("block-job-resume", "device", block: true, job => job.Resume());
        AddVerb("block-job-complete", "device", block: true, job => job.Complete());
        AddVerb("block-job-dismiss", "id", block: true, job => job.Dismiss());
        Commands.Add("block-job-finalize", JobIdArgument("block-job-finalize", "id"), async (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            arguments.CheckNoneUnexpected();
            await FindBlockJob(Jobs, id).FinalizeAsync().ConfigureAwait(false);
            return Empty;
        });

        AddVerb("job-pause", "id", block: false, job => job.Pause());
        AddVerb("job-resume", "id", block: false, job => job.Resume());
        AddVerb("job-complete", "id", block: false, job => job.Complete());
        AddVerb("job-dismiss", "id", block: false, job => job.Dismiss());
        Commands.Add("job-cancel", JobIdArgument("job-cancel", "id"), async (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            arguments.CheckNoneUnexpected();
            // job-cancel has no soft form: even after READY it aborts the job (BLOCK_JOB_CANCELLED, not COMPLETED).
            await FindJob(Jobs, id).CancelAsync(force: true).ConfigureAwait(false);
            return Empty;
        });
        Commands.Add("job-finalize", JobIdArgument("job-finalize", "id"), async (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            arguments.CheckNoneUnexpected();
            await FindJob(Jobs, id).FinalizeAsync().ConfigureAwait(false);
            return Empty;
        });

        Commands.Add("query-block-jobs", QapiObject.Empty, new QapiArray(QmpTypes.BlockJobInfo), (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            var list = new JsonArray();
            foreach (var job in Jobs.Jobs.OfType<BlockJob>())
            {
                var info = DescribeBlockJob(job.GetInfo());
                if (job is MirrorJob mirror)
                {
                    if (mirror.Type == JobType.Mirror)
                    {
                        // QEMU 8.2's BlockJobInfoMirror (7.2 has no such member).
                        info["actively-synced"] = mirror.ActivelySynced;
                    }

                    // Ours, after QEMU's members: what is left, the rates and the forecast.
                    MirrorProgressJson.AddTo(info, mirror.GetProgress());
                }

                list.Add((JsonNode)info);
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
        Commands.Add("query-jobs", QapiObject.Empty, new QapiArray(QmpTypes.JobInfo), (arguments, _) =>
        {
            arguments.CheckNoneUnexpected();
            var list = new JsonArray();
            foreach (var job in Jobs.Jobs)
            {
                var info = new JsonObject
                {
                    ["id"] = job.Id,
                    ["type"] = job.Type.ToWireName(),
                    ["status"] = job.Status.ToWireName(),
                    ["current-progress"] = job.ProgressCurrent,
                    ["total-progress"] = job.ProgressTotal,
                };
                if (job.Error is { } error)
                {
                    info["error"] = error;
                }

                list.Add((JsonNode)info);
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
    }

    /// <summary>
    /// The id of a job started without <c>job-id</c>: QEMU names it after the device's BlockBackend, and the
    /// nodes of qemu-storage-daemon are node names with no BlockBackend, so the name is empty and the job is
    /// refused with "Invalid job ID ''" (a node name is never taken for a job id).
    /// </summary>
    const string UnnamedDevice = "";

    /// <summary>The arguments of a command that names one job: <c>{id: str}</c> or <c>{device: str}</c>.</summary>
    static QapiObject JobIdArgument(string command, string idMember) => new($"q_obj_{command}-arg", (idMember, QapiBuiltin.Str));

    void AddVerb(string command, string idMember, bool block, Action<Job> verb) =>
        Commands.Add(command, JobIdArgument(command, idMember), (arguments, _) =>
        {
            var id = arguments.RequireString(idMember);
            arguments.CheckNoneUnexpected();
            verb(block ? FindBlockJob(Jobs, id) : FindJob(Jobs, id));
            return ValueTask.FromResult(Empty);
        });

    /// <summary>A BlockJobInfo as query-block-jobs returns it.</summary>
    static JsonObject DescribeBlockJob(BlockJobInfo info)
    {
        var result = new JsonObject
        {
            ["auto-finalize"] = info.AutoFinalize,
            ["io-status"] = info.IoStatus.ToWireName(),
            ["device"] = info.Device,
            ["auto-dismiss"] = info.AutoDismiss,
            ["busy"] = info.Busy,
            ["len"] = info.Len,
            ["offset"] = info.Offset,
            ["status"] = info.Status.ToWireName(),
            ["paused"] = info.Paused,
            ["speed"] = info.Speed,
            ["ready"] = info.Ready,
            ["type"] = info.Type.ToWireName(),
        };
        if (info.Error is { } error)
        {
            result["error"] = error;
        }

        return result;
    }
}
