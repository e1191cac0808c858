using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using BlockMirror.Block.Diagnostics;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs;

/// <summary>
/// Job progress on the BlockMirror meter, as observable gauges read when a listener collects (tags <c>job</c>,
/// the job id, and <c>type</c>): every job's offset and length (query-block-jobs' offset and len), and for a
/// mirror or active commit what <see cref="MirrorJob.GetProgress"/> measures: bytes remaining (dirty or in
/// flight), and the copy and dirty rates in bytes per second.
/// </summary>
static class JobMetrics
{
    static readonly ConditionalWeakTable<JobManager, object> Managers = new();

    static JobMetrics()
    {
        var meter = BlockMetrics.Meter;
        meter.CreateObservableGauge("blockmirror.job.offset", () => ObserveJobs(static j => j.ProgressCurrent),
            "By", "Bytes a job has done (query-block-jobs' offset)");
        meter.CreateObservableGauge("blockmirror.job.length", () => ObserveJobs(static j => j.ProgressTotal),
            "By", "Bytes a job has to do in all, as estimated now (query-block-jobs' len)");
        meter.CreateObservableGauge("blockmirror.job.remaining", () => ObserveMirrors(static p => p.Remaining),
            "By", "Bytes a mirror has still to copy: dirty or in flight");
        meter.CreateObservableGauge("blockmirror.job.copy_rate", () => ObserveMirrors(static p => p.CopyRate),
            "By/s", "Bytes per second a mirror copied over the last seconds");
        meter.CreateObservableGauge("blockmirror.job.dirty_rate", () => ObserveMirrors(static p => p.DirtyRate),
            "By/s", "Bytes per second of a mirror's source newly dirtied over the last seconds");
    }

    /// <summary>Measures the manager's jobs from now on, for as long as the manager lives.</summary>
    internal static void Track(JobManager manager) => Managers.AddOrUpdate(manager, manager);

    static IEnumerable<Measurement<long>> ObserveJobs(Func<Job, long> read)
    {
        foreach (var (manager, _) in Managers)
        {
            foreach (var job in manager.Jobs)
            {
                yield return new Measurement<long>(read(job), Tags(job));
            }
        }
    }

    static IEnumerable<Measurement<T>> ObserveMirrors<T>(Func<MirrorProgress, T> read)
        where T : struct
    {
        foreach (var (manager, _) in Managers)
        {
            foreach (var job in manager.Jobs)
            {
                if (job is MirrorJob mirror)
                {
                    yield return new Measurement<T>(read(mirror.GetProgress()), Tags(job));
                }
            }
        }
    }

    static KeyValuePair<string, object?>[] Tags(Job job) =>
        [new("job", job.Id), new("type", job.Type.ToWireName())];
}
