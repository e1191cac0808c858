namespace BlockMirror.TestKit;

/// <summary>
/// Serializes overlapping byte ranges: a holder of a range excludes every overlapping range until it
/// releases. Test writers use it so that concurrent writes never overlap in time, which keeps the model
/// of the disk exact while the writes still overlap with everything else (the mirror's copies).
/// </summary>
public sealed class RangeLock
{
    readonly Lock _lock = new();
    readonly List<(long Start, long End, TaskCompletionSource Released)> _held = [];

    public async Task<IDisposable> AcquireAsync(long offset, long length)
    {
        var end = offset + Math.Max(length, 1);
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                var conflict = _held.FindIndex(h => h.Start < end && offset < h.End);
                if (conflict < 0)
                {
                    var entry = (offset, end, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
                    _held.Add(entry);
                    return new Releaser(this, entry);
                }

                wait = _held[conflict].Released.Task;
            }

            await wait;
        }
    }

    void Release((long, long, TaskCompletionSource Released) entry)
    {
        lock (_lock)
        {
            _held.Remove(entry);
        }

        entry.Released.TrySetResult();
    }

    sealed class Releaser(RangeLock owner, (long, long, TaskCompletionSource) entry) : IDisposable
    {
        int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
            {
                owner.Release(entry);
            }
        }
    }
}
