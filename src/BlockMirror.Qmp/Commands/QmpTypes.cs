using BlockMirror.Block.Qapi;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// The QAPI types more than one command or event declares (qapi/job.json, block-core.json, block-export.json,
/// sockets.json, QEMU 7.2), under QEMU's names. A type here is what this daemon accepts or answers: an enum
/// lists the values accepted, an object the members read or written.
/// </summary>
public static class QmpTypes
{
    static readonly QapiBuiltin Str = QapiBuiltin.Str, Int = QapiBuiltin.Int, Bool = QapiBuiltin.Bool;

    public static QapiEnum JobType { get; } = new("JobType",
        ["commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load", "snapshot-save", "snapshot-delete"]);

    public static QapiEnum JobStatus { get; } = new("JobStatus", [.. Enum.GetValues<Jobs.JobStatus>().Select(s => s.ToWireName())]);

    public static QapiEnum BlockdevOnError { get; } = new("BlockdevOnError", ["report", "ignore", "enospc", "stop", "auto"]);

    public static QapiEnum MirrorSyncMode { get; } = new("MirrorSyncMode", ["top", "full", "none", "incremental", "bitmap"]);

    /// <summary>QEMU's background and write-blocking, and our <c>__org.blockmirror_adaptive</c>.</summary>
    public static QapiEnum MirrorCopyMode { get; } = new("MirrorCopyMode", [.. Enum.GetValues<Jobs.Mirror.MirrorCopyMode>().Select(m => m.ToWireName())]);

    public static QapiEnum IoStatus { get; } = new("BlockDeviceIoStatus", ["ok", "failed", "nospace"]);

    public static QapiEnum BlockExportType { get; } = new("BlockExportType", ["nbd", "vhost-user-blk", "fuse", "vduse-blk"]);

    public static QapiObject JobInfo { get; } = new("JobInfo",
        ("id", Str), ("type", JobType), ("status", JobStatus), ("current-progress", Int), ("total-progress", Int), ("*error", Str));

    /// <summary>
    /// BlockJobInfo, with QEMU 8.2's <c>actively-synced</c> and our progress members of a mirror
    /// (<see cref="MirrorProgressJson"/>) after QEMU's.
    /// </summary>
    public static QapiObject BlockJobInfo { get; } = new("BlockJobInfo",
        ("type", Str), ("device", Str), ("len", Int), ("offset", Int), ("busy", Bool), ("paused", Bool), ("speed", Int),
        ("io-status", IoStatus), ("ready", Bool), ("status", JobStatus), ("auto-finalize", Bool), ("auto-dismiss", Bool),
        ("*error", Str), ("*actively-synced", Bool),
        ("*remaining", Int), ("*copy-rate", Int), ("*dirty-rate", Int), ("*converging", Bool), ("*eta-seconds", Int));

    public static QapiObject BlockdevCacheInfo { get; } = new("BlockdevCacheInfo", ("writeback", Bool), ("direct", Bool), ("no-flush", Bool));

    /// <summary>ImageInfo, the members this daemon fills in.</summary>
    public static QapiObject ImageInfo { get; } = new("ImageInfo",
        ("filename", Str), ("format", Str), ("*dirty-flag", Bool), ("virtual-size", Int));

    /// <summary>BlockDirtyInfo, as QEMU 7.2 reports a node's dirty bitmaps (its deprecated <c>status</c> went in 6.0).</summary>
    public static QapiObject BlockDirtyInfo { get; } = new("BlockDirtyInfo",
        ("*name", Str), ("count", Int), ("granularity", QapiBuiltin.UInt32), ("recording", Bool), ("busy", Bool), ("persistent", Bool),
        ("*inconsistent", Bool));

    /// <summary>BlockDeviceInfo, the members this daemon fills in.</summary>
    public static QapiObject BlockDeviceInfo { get; } = new("BlockDeviceInfo",
        ("file", Str), ("*node-name", Str), ("ro", Bool), ("drv", Str), ("*backing_file", Str), ("backing_file_depth", Int),
        ("encrypted", Bool), ("detect_zeroes", new QapiEnum("BlockdevDetectZeroesOptions", ["off", "on", "unmap"])),
        ("bps", Int), ("bps_rd", Int), ("bps_wr", Int), ("iops", Int), ("iops_rd", Int), ("iops_wr", Int),
        ("image", ImageInfo), ("cache", BlockdevCacheInfo), ("write_threshold", Int), ("*dirty-bitmaps", new QapiArray(BlockDirtyInfo)));

    /// <summary>BlockInfo: a named BlockBackend (a guest's drive), as query-block lists it.</summary>
    public static QapiObject BlockInfo { get; } = new("BlockInfo",
        ("device", Str), ("*qdev", Str), ("type", Str), ("removable", Bool), ("locked", Bool), ("*inserted", BlockDeviceInfo),
        ("*tray_open", Bool), ("*io-status", IoStatus));
}
