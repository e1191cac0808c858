using BlockMirror.Block.Qapi;
using BlockMirror.Qmp.Commands;

namespace BlockMirror.Qmp.Events;

/// <summary>
/// Every event the daemon emits, with its <c>data</c> as QAPI declares it (qapi/job.json, block-core.json,
/// block-export.json, QEMU 7.2), for query-qmp-schema. An event added to the daemon is added here too; a test
/// checks the events a job and an export emit against these declarations.
/// </summary>
public static class QmpEvents
{
    static readonly QapiBuiltin Str = QapiBuiltin.Str, Int = QapiBuiltin.Int;

    static QapiObject Progress(string name, params QapiMember[] more) =>
        new(name, [("type", QmpTypes.JobType), ("device", Str), ("len", Int), ("offset", Int), ("speed", Int), .. more]);

    /// <summary>Each event's name and data.</summary>
    public static IReadOnlyList<(string Name, QapiObject Data)> All { get; } =
    [
        ("JOB_STATUS_CHANGE", new("q_obj_JOB_STATUS_CHANGE-arg", ("id", Str), ("status", QmpTypes.JobStatus))),
        ("BLOCK_JOB_READY", Progress("q_obj_BLOCK_JOB_READY-arg")),
        ("BLOCK_JOB_COMPLETED", Progress("q_obj_BLOCK_JOB_COMPLETED-arg", ("*error", Str))),
        ("BLOCK_JOB_CANCELLED", Progress("q_obj_BLOCK_JOB_CANCELLED-arg")),
        ("BLOCK_JOB_ERROR", new("q_obj_BLOCK_JOB_ERROR-arg", ("device", Str), ("operation", new QapiEnum("IoOperationType", ["read", "write"])),
            ("action", new QapiEnum("BlockErrorAction", ["ignore", "report", "stop"])))),
        ("BLOCK_JOB_PENDING", new("q_obj_BLOCK_JOB_PENDING-arg", ("type", QmpTypes.JobType), ("id", Str))),
        ("BLOCK_EXPORT_DELETED", new("q_obj_BLOCK_EXPORT_DELETED-arg", ("id", Str))),
        ("BLOCK_WRITE_THRESHOLD", new("q_obj_BLOCK_WRITE_THRESHOLD-arg",
            ("node-name", Str), ("amount-exceeded", QapiBuiltin.UInt64), ("write-threshold", QapiBuiltin.UInt64))),
    ];
}
