namespace BlockMirror.Block.Graph;

/// <summary>
/// Counts requests in flight on one node and lets a drainer wait until there are none.
/// </summary>
/// <remarks>
/// Enter/Exit are one interlocked operation each. Only the transition to zero takes the lock, so
/// that a waiter registering at the same moment cannot miss its wake-up: the waiter re-reads the
/// count under the lock, the last exiter signals under the lock.
/// </remarks>
public sealed class InFlightTracker
{
    readonly Lock _lock = new();
    long _count;
    TaskCompletionSource? _idle;

    /// <summary>Requests currently in flight.</summary>
    public long Count => Volatile.Read(ref _count);

    public void Enter() => Interlocked.Increment(ref _count);

    public void Exit()
    {
        var left = Interlocked.Decrement(ref _count);
        if (left > 0)
        {
            return;
        }

        System.Diagnostics.Debug.Assert(left == 0, "in-flight count went negative");
        TaskCompletionSource? idle;
        lock (_lock)
        {
            idle = _idle;
            _idle = null;
        }

        idle?.TrySetResult();
    }

    /// <summary>Completes when no request is in flight (at once if none is).</summary>
    public Task WaitIdleAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (Volatile.Read(ref _count) == 0)
            {
                return Task.CompletedTask;
            }

            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idle.Task.WaitAsync(cancellationToken);
        }
    }
}
