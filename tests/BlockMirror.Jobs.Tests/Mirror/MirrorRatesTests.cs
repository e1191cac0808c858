using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>The sliding-window rates and the forecast built on them, on time the tests pass in.</summary>
public sealed class MirrorRatesTests
{
    const long MiB = 1 << 20;

    static TimeSpan S(double seconds) => TimeSpan.FromSeconds(seconds);

    [Fact]
    public void Rates_are_the_counters_growth_over_the_window()
    {
        var rates = new MirrorRates(S(5));
        for (var t = 0; t <= 10; t++)
        {
            // 8 MiB/s copied, 2 MiB/s dirtied, steadily.
            rates.Measure(S(t), 8 * MiB * t, 2 * MiB * t, 100 * MiB);
        }

        var progress = rates.Measure(S(10), 80 * MiB, 20 * MiB, 60 * MiB);
        Assert.True(progress.Measured);
        Assert.Equal(8.0 * MiB, progress.CopyRate, 3);
        Assert.Equal(2.0 * MiB, progress.DirtyRate, 3);
        Assert.True(progress.Converging);
        Assert.Equal(S(10), progress.Eta);
    }

    [Fact]
    public void Only_the_last_window_counts()
    {
        var rates = new MirrorRates(S(4));
        long copied = 0;
        for (var t = 0; t <= 20; t++)
        {
            rates.Measure(S(t), copied, 0, MiB);
            // Fast for ten seconds, then slow.
            copied += t < 10 ? 10 * MiB : MiB;
        }

        var progress = rates.Measure(S(21), copied, 0, MiB);
        Assert.Equal(1.0 * MiB, progress.CopyRate, 3);
    }

    [Fact]
    public void A_job_that_stopped_moving_shows_zero_not_its_old_rate()
    {
        var rates = new MirrorRates(S(5));
        for (var t = 0; t <= 5; t++)
        {
            rates.Measure(S(t), 4 * MiB * t, 0, 10 * MiB);
        }

        // Paused for a minute: nobody sampled meanwhile.
        var progress = rates.Measure(S(65), 20 * MiB, 0, 10 * MiB);
        Assert.Equal(0, progress.CopyRate);
        Assert.False(progress.Converging);
        Assert.Null(progress.Eta);
    }

    [Fact]
    public void Rates_are_not_trusted_before_the_window_spans_a_second_nor_after_a_restart()
    {
        var rates = new MirrorRates();
        Assert.False(rates.Measure(S(0), 0, 0, MiB).Measured);
        var early = rates.Measure(S(0.5), MiB, 0, MiB);
        Assert.False(early.Measured);
        Assert.Null(early.Converging);
        Assert.Null(early.Eta);
        Assert.True(rates.Measure(S(1), 2 * MiB, 0, MiB).Measured);

        rates.Restart();
        Assert.False(rates.Measure(S(1.5), 3 * MiB, 0, MiB).Measured);
        Assert.Equal(2.0 * MiB, rates.Measure(S(2.5), 5 * MiB, 0, MiB).CopyRate, 3);
    }

    [Fact]
    public void Samples_closer_than_the_interval_do_not_crowd_out_the_window()
    {
        // A monitor polling in a tight loop must not shrink the window to its last few milliseconds.
        var rates = new MirrorRates(S(2));
        long copied = 0;
        for (var ms = 0; ms <= 3000; ms++)
        {
            rates.Measure(TimeSpan.FromMilliseconds(ms), copied, 0, MiB);
            copied += ms < 2500 ? 1000 : 0;
        }

        // Over the last two seconds (or a little more): 1.5 s copying at 1 MB/s, then 0.5 s idle.
        var rate = rates.Measure(S(3), copied, 0, MiB).CopyRate;
        Assert.InRange(rate, 600_000, 800_000);
    }

    [Theory]
    [InlineData(4, 4)]
    [InlineData(4, 6)]
    [InlineData(0, 0)]
    public void A_job_that_copies_no_faster_than_it_is_dirtied_will_not_converge(double copyMiB, double dirtyMiB)
    {
        var progress = new MirrorProgress(MiB, copyMiB * MiB, dirtyMiB * MiB, Measured: true);
        Assert.False(progress.Converging);
        Assert.Null(progress.Eta);
    }

    [Fact]
    public void In_sync_is_converged_whatever_the_rates()
    {
        var progress = new MirrorProgress(0, 0, 5 * MiB, Measured: false);
        Assert.True(progress.Converging);
        Assert.Equal(TimeSpan.Zero, progress.Eta);
    }

    [Fact]
    public void Before_the_copy_starts_nothing_remaining_says_nothing()
    {
        var progress = new MirrorProgress(0, 0, 0, Measured: false, Copying: false);
        Assert.Null(progress.Converging);
        Assert.Null(progress.Eta);
    }

    [Fact]
    public void A_forecast_of_a_barely_gaining_job_is_clamped()
    {
        var progress = new MirrorProgress(long.MaxValue, 1.000001, 1, Measured: true);
        Assert.Equal(MirrorProgress.MaxEta, progress.Eta);
    }
}
