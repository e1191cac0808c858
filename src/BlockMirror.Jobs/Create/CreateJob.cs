namespace BlockMirror.Jobs.Create;

/// <summary>
/// blockdev-create's job (QEMU's block/create.c): runs one image creation as a job of type <c>create</c>, with
/// QEMU's lifecycle for it: finalized by itself, dismissed only by the user (job-dismiss), so that its result
/// and error stay readable in query-jobs. Its progress is 0 of 1, then 1 of 1 whether the creation worked or not.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "A CancellationTokenSource without a timer holds nothing that needs disposing; a forced cancel may come at any time.")]
public sealed class CreateJob : Job
{
    readonly Func<CancellationToken, Task> _create;
    readonly CancellationTokenSource _cancel = new();

    CreateJob(JobManager manager, string id, Func<CancellationToken, Task> create)
        : base(manager, id, JobType.Create, autoFinalize: true, autoDismiss: false)
    {
        _create = create;
    }

    /// <summary>Registers and starts the job; refused (nothing run) when the id is malformed or taken.</summary>
    /// <param name="create">The creation; it throws to fail the job, its exception's message is the job's error.</param>
    public static CreateJob Start(JobManager manager, string id, Func<CancellationToken, Task> create)
    {
        var job = new CreateJob(manager, id, create);
        manager.Register(job);
        job.Start();
        return job;
    }

    protected override async Task RunAsync()
    {
        ProgressSetRemaining(1);
        try
        {
            await _create(_cancel.Token).ConfigureAwait(false);
        }
        finally
        {
            ProgressAdvance(1);
        }
    }

    protected override void OnForceCancelled() => _cancel.Cancel();
}
