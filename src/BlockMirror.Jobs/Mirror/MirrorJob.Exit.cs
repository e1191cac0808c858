using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>The end of a mirror: the filter goes, and on completion the target takes the source'\''s place.</summary>
public sealed partial class MirrorJob
{
    /// <summary>Success: pivot if completion was asked for, otherwise (a cancel after READY) leave the target as a point-in-time copy.</summary>
    protected override Task PrepareAsync() => ExitAsync(abort: false);

    protected override Task AbortAsync() => ExitAsync(abort: true);

    /// <summary>
    /// Takes the filter out and, on a completed job, puts the target in the source's place. Runs inside a
    /// drained section of the source, so no request is in flight while the edges move.
    /// </summary>
    async Task ExitAsync(bool abort)
    {
        if (_exited)
        {
            return;
        }

        _exited = true;
        _source.ReleaseDirtyBitmap(_dirty);
        EndSyncBitmap(success: !abort);
        if (_drain is null)
        {
            _drainStarted = Time.GetTimestamp();
            _drain = await _graph.DrainAsync(_source).ConfigureAwait(false);
        }

        // The job stops tracking writes here (and on completion the target takes over): its log goes before the
        // graph changes, so a crash from now on finds none to resume from, never a stale one.
        _log?.Remove();
        var complete = !abort && _shouldComplete;
        Exception? backingFailure = null;
        try
        {
            // The job stops using source and target before the graph changes, as QEMU's mirror_exit_common:
            // the target's new users (the source's) must not meet the job's refusal of other writers.
            _graph.SetPermissions(_target, BlockPermissions.None, BlockPermissions.All);
            if (_sourceUse is { } sourceUse)
            {
                _graph.SetPermissions(sourceUse, BlockPermissions.None, BlockPermissions.All);
            }

            var target = _target.Node;
            if (complete)
            {
                try
                {
                    await AttachTargetBackingAsync(target).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is BlockOpenException or BlockIOException or JobException)
                {
                    // Nothing has moved yet: end as a cancelled job would, and fail with the reason.
                    backingFailure = ex;
                    complete = false;
                }
            }

            if (complete)
            {
                if (_replaces is { } replaces)
                {
                    // The target takes the named node's place (the source's own, or that of a node under
                    // the source's filters); the filter then gives its users to whatever it leads to now: the
                    // source, whose filter chain ends at the target, or the target itself.
                    _graph.ReplaceNode(replaces, target);
                    _graph.ReplaceNode(_mirrorTop, _read.Node);
                }
                else
                {
                    // Every parent of the source (the filter's own edge included) moves to the target;
                    // then every parent of the filter (the users) follows, and the filter goes.
                    _graph.ReplaceNode(_source, target);
                    _graph.ReplaceNode(_mirrorTop, target);
                }
            }
            else
            {
                _graph.ReplaceNode(_mirrorTop, _source);
            }

            await _graph.DetachRootAsync(_target).ConfigureAwait(false);
            if (_sourceUse is { } used)
            {
                await _graph.DetachRootAsync(used).ConfigureAwait(false);
            }

            await _graph.RemoveNodeAsync(_mirrorTop).ConfigureAwait(false);
            _sourceResizeBlock?.Dispose();
            _targetResizeBlock?.Dispose();
            if (!complete && _reopenedTarget)
            {
                // An active commit that did not complete: the base goes back to read-only, as it was.
                await _graph.ReopenAsync(target, readOnly: true, CancellationToken.None).ConfigureAwait(false);
            }
        }
        finally
        {
            _drain.Dispose();
            _drain = null;
            Interlocked.Exchange(ref _pivotPauseTicks, Time.GetElapsedTime(_drainStarted).Ticks);
        }

        if (backingFailure is not null)
        {
            throw new JobException($"Could not give target '{_target.Node.Name}' its backing: {backingFailure.Message}");
        }
    }

    /// <summary>
    /// Gives a completing target its backing, by the backing mode: the source's base for sync=top (the
    /// source itself for sync=none), or the chain its own header names. A target that already has the
    /// right backing is left alone.
    /// </summary>
    async Task AttachTargetBackingAsync(BlockNode target)
    {
        switch (_options.BackingMode)
        {
            case MirrorBackingMode.SourceBackingChain:
                var backing = _options.Sync == MirrorSyncMode.None ? _source : _base;
                if (!ReferenceEquals(target.Backing, backing))
                {
                    _graph.SetBacking(target, backing);
                }

                break;
            case MirrorBackingMode.OpenBackingChain when target.Backing is null && target.Driver is IBackingFileFormat backingFile:
                await backingFile.OpenBackingFileAsync(_graph, CancellationToken.None).ConfigureAwait(false);
                break;
        }
    }
}
