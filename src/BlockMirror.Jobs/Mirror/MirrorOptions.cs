namespace BlockMirror.Jobs.Mirror;

/// <summary>A mirror job's options, with QMP's names and defaults (blockdev-mirror).</summary>
public sealed record MirrorOptions
{
    /// <summary>Default copy buffer: 16 operations of 1 MiB (QEMU's DEFAULT_MIRROR_BUF_SIZE).</summary>
    public const long DefaultBufSize = MirrorJob.MaxInFlight * MirrorJob.MaxIoBytes;

    /// <summary><c>job-id</c>.</summary>
    public required string JobId { get; init; }

    /// <summary><c>sync</c>.</summary>
    public MirrorSyncMode Sync { get; init; } = MirrorSyncMode.Full;

    /// <summary><c>bitmap</c>: the source's dirty bitmap whose bits are what a <c>sync=bitmap</c> job copies.</summary>
    public string? Bitmap { get; init; }

    /// <summary><c>bitmap-mode</c>: what happens to <see cref="Bitmap"/> at the end; required with it (Proxmox's rule).</summary>
    public BitmapSyncMode? BitmapMode { get; init; }

    /// <summary>
    /// Ours (QMP <c>__org.blockmirror_write-intent-log</c>): keep the job's dirty state durable in a write-intent log
    /// beside the source's image file, so that after a crash the job can be resumed (<see cref="Resume"/>).
    /// </summary>
    public bool WriteIntentLog { get; init; }

    /// <summary>
    /// Ours (QMP <c>__org.blockmirror_resume</c>): continue the crashed mirror whose write-intent log is beside the
    /// source, copying only what it marks (then keeping it, as <see cref="WriteIntentLog"/>).
    /// </summary>
    public bool Resume { get; init; }

    /// <summary>How often the write-intent log's lazy clearing looks (not a QMP option; tests make it short).</summary>
    internal TimeSpan WriteIntentLogClearInterval { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// How often the write-intent log clears the regions the copy settled that no guest wrote (not a QMP option): each
    /// such pass costs a flush of the target and a log write, so not more often than this.
    /// </summary>
    internal TimeSpan WriteIntentLogQuickClearInterval { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary><c>granularity</c> in bytes; 0 picks the target's cluster size clamped to 4 KiB..64 KiB (64 KiB without one).</summary>
    public long Granularity { get; init; }

    /// <summary><c>buf-size</c> in bytes; 0 picks <see cref="DefaultBufSize"/>.</summary>
    public long BufSize { get; init; }

    /// <summary><c>speed</c> in bytes per second; 0 is unlimited.</summary>
    public long Speed { get; init; }

    /// <summary><c>on-source-error</c>.</summary>
    public BlockdevOnError OnSourceError { get; init; } = BlockdevOnError.Report;

    /// <summary><c>on-target-error</c>.</summary>
    public BlockdevOnError OnTargetError { get; init; } = BlockdevOnError.Report;

    /// <summary><c>unmap</c>: zero ranges may be deallocated on the target.</summary>
    public bool Unmap { get; init; } = true;

    /// <summary><c>auto-finalize</c>.</summary>
    public bool AutoFinalize { get; init; } = true;

    /// <summary><c>auto-dismiss</c>.</summary>
    public bool AutoDismiss { get; init; } = true;

    /// <summary><c>filter-node-name</c>: the name of the mirror-top node; generated when null.</summary>
    public string? FilterNodeName { get; init; }

    /// <summary><c>replaces</c>: the node the target takes the place of at completion (the source, or a filter above it); null: the source.</summary>
    public string? Replaces { get; init; }

    /// <summary>What happens to the target's backing at completion (drive-mirror's modes; blockdev-mirror leaves it).</summary>
    public MirrorBackingMode BackingMode { get; init; } = MirrorBackingMode.LeaveBackingChain;

    /// <summary>
    /// <c>target-is-zero</c> (QEMU 10.1): the user asserts that the target reads as zeroes before the job starts,
    /// so zero ranges of the source are not written to it. It is the user's word, as in QEMU: on a target
    /// that holds other bytes, those stay where the source reads zeroes. Ignored (the target is looked at
    /// instead) when the target's backing is still to be opened at the switch, since its reads change then.
    /// </summary>
    public bool TargetIsZero { get; init; }

    /// <summary><c>copy-mode</c>.</summary>
    public MirrorCopyMode CopyMode { get; init; } = MirrorCopyMode.Background;

    /// <summary>Bytes copied between two flushes of the target during the bulk copy (not a QMP option; tests make it small).</summary>
    internal long BulkFlushBytes { get; init; } = 256L << 20;
}
