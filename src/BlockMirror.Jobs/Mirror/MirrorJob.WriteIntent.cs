using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The job's side of its write-intent log (<see cref="WriteIntentLog"/>): made or reopened at the start, read into
/// the dirty bitmap on a resume, cleared lazily by the copy loop, removed when the job ends.
/// </summary>
public sealed partial class MirrorJob
{
    WriteIntentLog? _log;
    DateTimeOffset _lastLogClear;
    DateTimeOffset _lastLogQuickClear;

    /// <summary>The path of the job's write-intent log, or null when it keeps none.</summary>
    public string? WriteIntentLogPath => _log?.Path;

    /// <summary>
    /// Where the log of a job with <see cref="MirrorOptions.WriteIntentLog"/> or <see cref="MirrorOptions.Resume"/>
    /// goes, checked before the graph changes; a resume opens (and checks) its crashed job's log here. Null path:
    /// the job keeps none.
    /// </summary>
    static (string? Path, WriteIntentLog? Resumed) PlanWriteIntentLog(BlockNode source, BlockNode target, MirrorOptions options)
    {
        if (!options.WriteIntentLog && !options.Resume)
        {
            return (null, null);
        }

        var path = WriteIntentLog.PathFor(source)
            ?? throw new JobException($"A write-intent log is kept beside the source's image file, and '{source.Name}' has no local file");
        if (options.Resume)
        {
            return (path, WriteIntentLog.Open(path, source, target));
        }

        WriteIntentLog.RefuseExisting(path, source);
        return (path, null);
    }

    /// <summary>
    /// Creates a new job's log, the last step of the start that can fail: it marks every region the job will copy
    /// (all of them for a full or top copy, the sync bitmap's for sync=bitmap, none for sync=none), so a crash
    /// before the first clear resumes the whole job.
    /// </summary>
    static WriteIntentLog CreateWriteIntentLog(string path, BlockNode source, BlockNode target, MirrorOptions options, long granularity, DirtyBitmap? syncBitmap)
    {
        Func<long, long, bool> initial = options.Sync switch
        {
            MirrorSyncMode.None => (_, _) => false,
            MirrorSyncMode.Bitmap => (offset, length) => syncBitmap!.NextDirty(offset) is var d && d >= 0 && d < offset + length,
            _ => (_, _) => true,
        };
        return WriteIntentLog.Create(path, source, target, WriteIntentLog.RegionSizeFor(source.Length, granularity), initial);
    }

    /// <summary>
    /// The log's clearing, from the copy loop. Once per <see cref="MirrorOptions.WriteIntentLogQuickClearInterval"/>,
    /// the regions no guest has written that the copy has settled are looked at, source and target flushed, and those
    /// cleared (<see cref="WriteIntentLog.SettledUntouched"/>): during the bulk copy the log follows it within a
    /// fraction of a second. Once per <see cref="MirrorOptions.WriteIntentLogClearInterval"/>, the lazy clearing of
    /// the others: when some region was idle at the last look, flush source and target, then clear those still idle and
    /// untouched (see <see cref="WriteIntentLog.ClearIdle"/>); either way note the regions idle now.
    /// </summary>
    async Task ClearWriteIntentLogAsync()
    {
        if (_log is not { Abandoned: false } log)
        {
            return;
        }

        var now = Time.GetUtcNow();
        var lazy = now - _lastLogClear >= _options.WriteIntentLogClearInterval;
        var untouched = now - _lastLogQuickClear >= _options.WriteIntentLogQuickClearInterval ? log.SettledUntouched(RegionSettled) : null;
        if (!lazy && untouched is null)
        {
            return;
        }

        _lastLogQuickClear = now;
        if (lazy)
        {
            _lastLogClear = now;
        }

        // Both disks hold a region's bytes before it leaves the log. Flushing the target alone is not enough: the copy
        // read what the source's cache held (a guest write the guest has not flushed yet, or one from before the job),
        // and a power loss that kept it on the target and lost it on the source would leave the two different with
        // no mark to say so; a resume would not copy the region, and after the switch the guest would find data its
        // own disk had lost.
        if ((untouched is not null || (lazy && log.HasIdleCandidates)) &&
            !(await _engine.FlushSourceAsync().ConfigureAwait(false) && await _engine.FlushTargetAsync().ConfigureAwait(false)))
        {
            return;
        }

        if (untouched is not null && log.ClearUntouched(untouched) is { } quick)
        {
            await quick.ConfigureAwait(false);
        }

        if (lazy && log.ClearIdle(RegionSettled) is { } write)
        {
            await write.ConfigureAwait(false);
        }
    }

    /// <summary>Nothing of [offset, offset + length) is dirty or being copied.</summary>
    bool RegionSettled(long offset, long length)
    {
        var dirty = _dirty.NextDirty(offset);
        return (dirty < 0 || dirty >= offset + length) && !_engine.InFlightWithin(offset, offset + length);
    }
}
