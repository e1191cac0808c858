using BlockMirror.Jobs.Events;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockMirror.Jobs;

/// <summary>
/// Every job of one process: unique ids, the lock that guards all job state (QEMU's job_mutex), the time
/// source, and the event bus hosts subscribe to. Every event published is also logged (<see cref="JobLog"/>)
/// through the logger factory it is given (none by default).
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "SemaphoreSlim needs disposing only when its wait handle is used; the start gate never uses it.")]
public sealed class JobManager
{
    readonly List<Job> _jobs = [];

    public JobManager(TimeProvider? time = null, ILoggerFactory? loggerFactory = null)
    {
        Time = time ?? TimeProvider.System;
        Logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<JobManager>();
        // The job metrics read every live manager's jobs when a listener collects.
        JobMetrics.Track(this);
    }

    internal Lock SyncRoot { get; } = new();

    /// <summary>
    /// Held by a job's start from its checks (id free, nodes free) to its registration, so no two starts
    /// pass the checks before either has registered. QEMU gets the same from running one QMP command at a time.
    /// </summary>
    internal SemaphoreSlim StartGate { get; } = new(1, 1);

    public TimeProvider Time { get; }

    public JobEventBus Events { get; } = new();

    internal ILogger Logger { get; }

    public IReadOnlyList<Job> Jobs
    {
        get
        {
            lock (SyncRoot)
            {
                return [.. _jobs];
            }
        }
    }

    public Job? Find(string id)
    {
        lock (SyncRoot)
        {
            return _jobs.Find(j => j.Id == id);
        }
    }

    /// <summary>The job with this id, or QEMU's error for a missing one.</summary>
    public Job Get(string id) =>
        Find(id) ?? throw new JobException($"Job '{id}' not found", notFound: true);

    /// <summary>Checks a job id as QEMU does (a letter, then letters, digits, '-', '.', '_'), and that it is free.</summary>
    public void ValidateNewId(string id)
    {
        ValidateIdForm(id);
        if (Find(id) is not null)
        {
            throw new JobException($"Job ID '{id}' already in use");
        }
    }

    static void ValidateIdForm(string id)
    {
        if (id.Length == 0 || !char.IsAsciiLetter(id[0]) ||
            !id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_'))
        {
            throw new JobException($"Invalid job ID '{id}'");
        }
    }

    /// <summary>Refuses nodes another block job works on (QEMU's op blockers).</summary>
    public void CheckNodesFree(string jobId, params Block.Graph.BlockNode[] nodes)
    {
        lock (SyncRoot)
        {
            foreach (var job in _jobs.OfType<BlockJob>())
            {
                foreach (var used in job.UsedNodes)
                {
                    if (nodes.Any(n => ReferenceEquals(n, used)))
                    {
                        throw new JobException($"Node '{used.Name}' is busy: block device is in use by block job: {job.Type.ToWireName()}");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Whether a block job works on the node: QEMU's op blockers, which make commands that would change the
    /// node under the job (block_resize) refuse it.
    /// </summary>
    public bool IsUsedByBlockJob(Block.Graph.BlockNode node)
    {
        lock (SyncRoot)
        {
            return _jobs.OfType<BlockJob>().Any(job => job.UsedNodes.Any(used => ReferenceEquals(used, node)));
        }
    }

    /// <summary>Registers a constructed job (state created). Call <see cref="Job.Start"/> next.</summary>
    public void Register(Job job)
    {
        // Every job passes here, whoever built it: check the id's form here too, as QEMU's job_create does.
        ValidateIdForm(job.Id);
        lock (SyncRoot)
        {
            if (_jobs.Exists(j => j.Id == job.Id))
            {
                throw new JobException($"Job ID '{job.Id}' already in use");
            }

            _jobs.Add(job);
            job.Create();
        }
    }

    internal void RemoveLocked(Job job) => _jobs.Remove(job);

    internal void PublishLocked(JobEvent e)
    {
        Log(e);
        Events.Publish(e with { Timestamp = Time.GetUtcNow() });
    }

    /// <summary>Logs an event as it is published (the I/O errors are logged where the errno is known: <see cref="BlockJob"/>).</summary>
    void Log(JobEvent e)
    {
        if (!Logger.IsEnabled(LogLevel.Information))
        {
            // Nothing below is logged at a level under Information; skip the names' lookups.
            return;
        }

        // The wire names are constants looked up by a switch; the guard above already skips them when nothing logs.
#pragma warning disable CA1873
        switch (e)
        {
            case JobStatusChangeEvent change:
                JobLog.StateChange(Logger, change.Id, change.Status.ToWireName());
                break;
            case BlockJobReadyEvent ready:
                JobLog.Ready(Logger, ready.Type.ToWireName(), ready.Device, ready.Offset, ready.Len);
                break;
            case BlockJobCompletedEvent { Error: { } error } failed:
                JobLog.Failed(Logger, failed.Type.ToWireName(), failed.Device, error);
                break;
            case BlockJobCompletedEvent completed:
                JobLog.Completed(Logger, completed.Type.ToWireName(), completed.Device, completed.Offset, completed.Len);
                break;
            case BlockJobCancelledEvent cancelled:
                JobLog.Cancelled(Logger, cancelled.Type.ToWireName(), cancelled.Device, cancelled.Offset, cancelled.Len);
                break;
        }
#pragma warning restore CA1873
    }

    /// <summary>
    /// Force-cancels every job and waits for each to end and be dismissed (shutdown, quit), as QEMU's
    /// job_cancel_sync_all does: a job's cancellation and state changes are announced before the process goes.
    /// </summary>
    public async Task CancelAllAsync()
    {
        foreach (var job in Jobs)
        {
            await job.CancelForShutdownAsync().ConfigureAwait(false);
        }
    }
}
