namespace BlockMirror.Block.Graph;

/// <summary>
/// Keeps a read-modify-write from losing a concurrent write (QEMU's tracked requests with
/// <c>serialising</c>): while a padded write reads the blocks around its data and writes them back,
/// no overlapping data-changing request may run, and it may not start while one runs.
/// </summary>
/// <remarks>
/// <para>Most requests are aligned and never pad, so they must not pay for this. An aligned request
/// that changes data enters as <em>plain</em>: one interlocked increment, then a check that no
/// serialising request exists. Only when one does is it <em>tracked</em> (its range recorded under the
/// lock) and made to wait for the serialising requests it overlaps.</para>
/// <para>The plain entry and a serialising request's registration form a Dekker pair: the plain request
/// increments <c>_plain</c> then reads <c>_serialising</c>; the serialising request increments
/// <c>_serialising</c> then reads <c>_plain</c>. Both are full fences, so at least one sees the other:
/// either the plain request goes tracked, or the serialising request waits until every plain request
/// that got in before it has finished.</para>
/// <para>A request waits only for overlapping requests registered before it (by sequence number), so
/// waits never form a cycle. Reads never wait: a padded read changes nothing.</para>
/// </remarks>
sealed class SerialisingRanges
{
    readonly Lock _lock = new();
    readonly List<TrackedRange> _tracked = [];
    long _sequence;

    // Plain data-changing requests in flight, and serialising requests registered.
    long _plain;
    int _serialising;

    // Serialising requests waiting for the plain requests in flight to finish. Guarded by _lock.
    TaskCompletionSource? _plainIdle;

    /// <summary>
    /// The fast path: true when no serialising request exists, and the caller must call
    /// <see cref="ExitPlain"/> when done. False: the caller must go through <see cref="BeginAsync"/>.
    /// </summary>
    public bool TryEnterPlain()
    {
        Interlocked.Increment(ref _plain);
        if (Volatile.Read(ref _serialising) == 0)
        {
            return true;
        }

        ExitPlain();
        return false;
    }

    public void ExitPlain()
    {
        if (Interlocked.Decrement(ref _plain) != 0 || Volatile.Read(ref _serialising) == 0)
        {
            return;
        }

        TaskCompletionSource? idle;
        lock (_lock)
        {
            idle = _plainIdle;
            _plainIdle = null;
        }

        idle?.TrySetResult();
    }

    /// <summary>
    /// Records a request over [<paramref name="offset"/>, <paramref name="end"/>) and waits until it may run:
    /// a serialising one after every overlapping request before it (and every plain one in flight), any
    /// other after the overlapping serialising ones before it. Dispose the result when the request is done.
    /// </summary>
    public async ValueTask<TrackedRange> BeginAsync(long offset, long end, bool serialising, CancellationToken cancellationToken)
    {
        TrackedRange range;
        lock (_lock)
        {
            range = new TrackedRange(this, offset, end, serialising, ++_sequence);
            _tracked.Add(range);
            if (serialising)
            {
                Interlocked.Increment(ref _serialising);
            }
        }

        try
        {
            if (serialising)
            {
                await WaitForPlainAsync(cancellationToken).ConfigureAwait(false);
            }

            while (FirstConflict(range) is { } earlier)
            {
                await earlier.Done.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            range.Dispose();
            throw;
        }

        return range;
    }

    async ValueTask WaitForPlainAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            Task idle;
            lock (_lock)
            {
                if (Volatile.Read(ref _plain) == 0)
                {
                    return;
                }

                _plainIdle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                idle = _plainIdle.Task;
            }

            await idle.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    TrackedRange? FirstConflict(TrackedRange range)
    {
        lock (_lock)
        {
            foreach (var other in _tracked)
            {
                if (other.Sequence < range.Sequence && (other.Serialising || range.Serialising) &&
                    other.Offset < range.End && range.Offset < other.End)
                {
                    return other;
                }
            }
        }

        return null;
    }

    void End(TrackedRange range)
    {
        lock (_lock)
        {
            _tracked.Remove(range);
            if (range.Serialising)
            {
                Interlocked.Decrement(ref _serialising);
            }
        }

        range.Complete();
    }

    /// <summary>One tracked request; disposing it lets the requests waiting for it go.</summary>
    public sealed class TrackedRange(SerialisingRanges owner, long offset, long end, bool serialising, long sequence) : IDisposable
    {
        readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        int _ended;

        public long Offset => offset;

        public long End => end;

        public bool Serialising => serialising;

        public long Sequence => sequence;

        public Task Done => _done.Task;

        internal void Complete() => _done.TrySetResult();

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _ended, 1) == 0)
            {
                owner.End(this);
            }
        }
    }
}
