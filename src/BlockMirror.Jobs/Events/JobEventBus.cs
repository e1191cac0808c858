namespace BlockMirror.Jobs.Events;

/// <summary>
/// Delivers job events to every subscriber, in the order they were emitted. Jobs publish while holding
/// the job manager's lock (that is what orders them), so a subscriber must only record or enqueue the
/// event, never block or call back into a job.
/// </summary>
public sealed class JobEventBus
{
    readonly Lock _lock = new();
    Action<JobEvent>[] _subscribers = [];

    /// <summary>Receives every later event until the returned handle is disposed.</summary>
    public IDisposable Subscribe(Action<JobEvent> subscriber)
    {
        lock (_lock)
        {
            _subscribers = [.. _subscribers, subscriber];
        }

        return new Subscription(this, subscriber);
    }

    internal void Publish(JobEvent e)
    {
        foreach (var subscriber in Volatile.Read(ref _subscribers))
        {
            subscriber(e);
        }
    }

    void Unsubscribe(Action<JobEvent> subscriber)
    {
        lock (_lock)
        {
            _subscribers = Array.FindAll(_subscribers, s => s != subscriber);
        }
    }

    sealed class Subscription(JobEventBus bus, Action<JobEvent> subscriber) : IDisposable
    {
        public void Dispose() => bus.Unsubscribe(subscriber);
    }
}
