using BlockMirror.Jobs.Events;

namespace BlockMirror.Jobs.Tests;

/// <summary>Records every event a job manager emits, in order, for tests to compare with the expected sequence.</summary>
sealed class EventLog : IDisposable
{
    readonly Lock _lock = new();
    readonly List<JobEvent> _events = [];
    readonly IDisposable _subscription;

    public EventLog(JobManager manager) => _subscription = manager.Events.Subscribe(Add);

    public IReadOnlyList<JobEvent> Events
    {
        get
        {
            lock (_lock)
            {
                return [.. _events];
            }
        }
    }

    /// <summary>
    /// The sequence as short names: a JOB_STATUS_CHANGE by its new status ("running"), any other event by
    /// its name, with " action" appended for BLOCK_JOB_ERROR and " (error)" for a failed BLOCK_JOB_COMPLETED.
    /// </summary>
    public IReadOnlyList<string> Names => [.. Events.Select(Describe)];

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _events.Count;
            }
        }
    }

    public static string Describe(JobEvent e) => e switch
    {
        JobStatusChangeEvent s => s.Status.ToWireName(),
        BlockJobErrorEvent err => $"{err.Name} {err.Operation} {err.Action.ToWireName()}",
        BlockJobCompletedEvent { Error: not null } => $"{e.Name} (error)",
        _ => e.Name,
    };

    /// <summary>Waits for an event that matches, recorded before or after the call.</summary>
    public async Task<JobEvent> WaitForAsync(Func<JobEvent, bool> match, string what)
    {
        using var cts = new CancellationTokenSource(TestJob.Limit);
        while (true)
        {
            var found = Events.FirstOrDefault(match);
            if (found is not null)
            {
                return found;
            }

            if (cts.IsCancellationRequested)
            {
                throw new TimeoutException($"no {what} within {TestJob.Limit.TotalSeconds} s; events: {string.Join(", ", Names)}");
            }

            await Task.Delay(1, CancellationToken.None);
        }
    }

    public void Dispose() => _subscription.Dispose();

    void Add(JobEvent e)
    {
        lock (_lock)
        {
            _events.Add(e);
        }
    }
}
