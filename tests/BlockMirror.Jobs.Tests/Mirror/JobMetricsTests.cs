using System.Diagnostics.Metrics;
using BlockMirror.Block.Diagnostics;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>Job progress as gauges on the BlockMirror meter: the numbers query-block-jobs and the mirror's progress show.</summary>
public sealed class JobMetricsTests
{
    [Fact]
    public async Task A_listener_reads_a_running_mirrors_offset_length_remaining_and_rates()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        // The meter is process-wide: a job id of its own keeps other tests' jobs out of the readings.
        var id = $"metrics-{Guid.NewGuid():N}";
        var job = await rig.StartAsync(MirrorRig.Options(id) with { Speed = 4096 });
        await MirrorTestRunner.WaitParkedAsync(job);
        time.Advance(TimeSpan.FromSeconds(1));

        var readings = new Dictionary<string, double>();
        using (var listener = new MeterListener())
        {
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == BlockMetrics.MeterName && instrument.Name.StartsWith("blockmirror.job.", StringComparison.Ordinal))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            };
            void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
            {
                var (job, type) = ((object?)null, (object?)null);
                foreach (var tag in tags)
                {
                    (job, type) = tag.Key switch { "job" => (tag.Value, type), "type" => (job, tag.Value), _ => (job, type) };
                }

                if (Equals(job, id))
                {
                    Assert.Equal("mirror", type);
                    readings.Add(instrument.Name, value);
                }
            }

            listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
            listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
            listener.Start();
            listener.RecordObservableInstruments();
        }

        // The job is held by its speed limit, so nothing moves between the readings and these.
        var progress = job.GetProgress();
        Assert.Equal(job.ProgressCurrent, readings["blockmirror.job.offset"]);
        Assert.Equal(job.ProgressTotal, readings["blockmirror.job.length"]);
        Assert.True(job.ProgressTotal > 0);
        Assert.Equal(progress.Remaining, readings["blockmirror.job.remaining"]);
        Assert.True(progress.Remaining > 0);
        Assert.Equal(progress.CopyRate, readings["blockmirror.job.copy_rate"]);
        Assert.Equal(progress.DirtyRate, readings["blockmirror.job.dirty_rate"]);

        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
    }
}
