using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>The adaptive copy mode's decisions, on measurements and time the tests choose.</summary>
public sealed class AdaptiveCopyPolicyTests
{
    const long MiB = 1 << 20;
    static readonly TimeSpan Step = TimeSpan.FromMilliseconds(250);

    static MirrorProgress Gaining => new(100 * MiB, 10 * MiB, 2 * MiB, Measured: true);

    static MirrorProgress Losing => new(100 * MiB, 10 * MiB, 12 * MiB, Measured: true);

    /// <summary>Feeds the same measurement from <paramref name="from"/> until the mode changes; returns when it did, or null.</summary>
    static TimeSpan? RunUntilSwitch(AdaptiveCopyPolicy policy, TimeSpan from, TimeSpan length, MirrorProgress progress)
    {
        for (var now = from; now <= from + length; now += Step)
        {
            if (policy.Evaluate(now, ready: false, progress))
            {
                return now;
            }
        }

        return null;
    }

    [Fact]
    public void A_job_that_gains_on_its_writers_stays_in_background()
    {
        var policy = new AdaptiveCopyPolicy();
        Assert.Null(RunUntilSwitch(policy, TimeSpan.Zero, TimeSpan.FromMinutes(10), Gaining));
        Assert.False(policy.WritesBlocking);
    }

    [Fact]
    public void A_job_that_would_not_converge_blocks_writes_once_the_verdict_has_held()
    {
        var policy = new AdaptiveCopyPolicy();
        var switched = RunUntilSwitch(policy, TimeSpan.Zero, TimeSpan.FromSeconds(10), Losing);
        Assert.Equal(AdaptiveCopyPolicy.Hold, switched);
        Assert.True(policy.WritesBlocking);
    }

    [Fact]
    public void Gaining_by_less_than_the_margin_counts_as_losing()
    {
        var policy = new AdaptiveCopyPolicy();
        var barely = new MirrorProgress(100 * MiB, 10 * MiB, 9 * MiB, Measured: true);
        Assert.NotNull(RunUntilSwitch(policy, TimeSpan.Zero, TimeSpan.FromSeconds(10), barely));
    }

    [Fact]
    public void Bursts_shorter_than_the_hold_do_not_flip_the_mode()
    {
        var policy = new AdaptiveCopyPolicy();
        var now = TimeSpan.Zero;
        for (var i = 0; i < 100; i++, now += Step)
        {
            // Losing for 1.5 s, then gaining for a moment, over and over.
            Assert.False(policy.Evaluate(now, ready: false, i % 8 == 7 ? Gaining : Losing));
        }

        Assert.False(policy.WritesBlocking);
    }

    [Fact]
    public void Unmeasured_rates_decide_nothing()
    {
        var policy = new AdaptiveCopyPolicy();
        var unmeasured = Losing with { Measured = false };
        Assert.Null(RunUntilSwitch(policy, TimeSpan.Zero, TimeSpan.FromMinutes(1), unmeasured));
    }

    [Fact]
    public void Write_blocking_is_left_for_a_probe_after_a_dwell_that_doubles_while_the_writers_stay_fast()
    {
        var policy = new AdaptiveCopyPolicy();
        var now = RunUntilSwitch(policy, TimeSpan.Zero, TimeSpan.FromSeconds(10), Losing)!.Value;
        var dwells = new List<TimeSpan>();
        for (var round = 0; round < 6; round++)
        {
            // While blocking, the dirty rate says nothing (writes dirty nothing): only the dwell ends it.
            var probe = RunUntilSwitch(policy, now, TimeSpan.FromMinutes(5), Gaining)!.Value;
            Assert.False(policy.WritesBlocking);
            dwells.Add(probe - now);

            // The probe finds the writers still too fast.
            now = RunUntilSwitch(policy, probe, TimeSpan.FromSeconds(10), Losing)!.Value;
            Assert.True(policy.WritesBlocking);
        }

        Assert.Equal([5, 10, 20, 40, 80, 80], dwells.Select(d => (int)Math.Round(d.TotalSeconds)));
    }

    [Fact]
    public void A_probe_that_keeps_gaining_stays_in_background_and_resets_the_dwell()
    {
        var policy = new AdaptiveCopyPolicy();
        var now = RunUntilSwitch(policy, TimeSpan.Zero, TimeSpan.FromSeconds(10), Losing)!.Value;
        now = RunUntilSwitch(policy, now, TimeSpan.FromMinutes(1), Losing)!.Value;
        now = RunUntilSwitch(policy, now, TimeSpan.FromSeconds(10), Losing)!.Value;
        Assert.True(policy.WritesBlocking);
        now = RunUntilSwitch(policy, now, TimeSpan.FromMinutes(1), Losing)!.Value;

        // The writers slowed down: background gains for a minute, and stays.
        Assert.Null(RunUntilSwitch(policy, now, TimeSpan.FromMinutes(1), Gaining));
        now += TimeSpan.FromMinutes(1) + Step;

        // The next bad spell starts over with the first dwell.
        var blocked = RunUntilSwitch(policy, now, TimeSpan.FromSeconds(10), Losing)!.Value;
        var probe = RunUntilSwitch(policy, blocked, TimeSpan.FromMinutes(5), Losing)!.Value;
        Assert.Equal(AdaptiveCopyPolicy.FirstDwell, probe - blocked);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void READY_makes_write_blocking_final(bool blockingBefore)
    {
        var policy = new AdaptiveCopyPolicy();
        var now = TimeSpan.Zero;
        if (blockingBefore)
        {
            now = RunUntilSwitch(policy, now, TimeSpan.FromSeconds(10), Losing)!.Value;
        }

        Assert.Equal(!blockingBefore, policy.Evaluate(now + Step, ready: true, Gaining));
        Assert.True(policy.WritesBlocking);
        Assert.True(policy.Final);

        // Neither a dwell's end nor a gaining measurement lets go.
        Assert.Null(RunUntilSwitch(policy, now, TimeSpan.FromMinutes(10), Gaining));
        Assert.True(policy.WritesBlocking);
    }
}
