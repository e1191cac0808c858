namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// When the adaptive copy mode blocks guest writes: never while the background copy gains on the writers,
/// from the moment the measured rates say it would not converge, and for good from READY on, so that the
/// final pass finds nothing to copy. Pure decisions over the time and measurements it is given.
/// </summary>
/// <remarks>
/// <para>While writes block they no longer dirty the source, so the dirty rate says nothing about the
/// writers then; the policy cannot watch it to decide when to let go. It lets go after a dwell instead and
/// measures afresh in background (a probe). A probe that finds the job losing again doubles the dwell, up
/// to <see cref="MaxDwell"/>; one that keeps gaining for <see cref="Hold"/> resets it. A verdict must hold
/// for <see cref="Hold"/> before the mode changes, so a burst of writes does not flip it (hysteresis on
/// time), and "gaining" needs the copy to beat the dirty rate by <see cref="Margin"/> (hysteresis on rate:
/// a job that barely gains would take for ever).</para>
/// <para>The caller restarts its rate window whenever the mode changes (<see cref="Evaluate"/> returns
/// true): rates measured in the other mode describe the other mode.</para>
/// </remarks>
public sealed class AdaptiveCopyPolicy
{
    /// <summary>The copy must beat the dirty rate by this factor to count as gaining.</summary>
    public const double Margin = 1.25;

    /// <summary>How long a verdict must hold before the mode changes.</summary>
    public static readonly TimeSpan Hold = TimeSpan.FromSeconds(2);

    /// <summary>The first stay in write-blocking before a probe.</summary>
    public static readonly TimeSpan FirstDwell = TimeSpan.FromSeconds(5);

    public static readonly TimeSpan MaxDwell = TimeSpan.FromSeconds(80);

    TimeSpan? _losingSince;
    TimeSpan? _gainingSince;
    TimeSpan _blockingUntil;
    TimeSpan _dwell = FirstDwell;

    /// <summary>Whether guest writes should block now.</summary>
    public bool WritesBlocking { get; private set; }

    /// <summary>True once READY made write-blocking final.</summary>
    public bool Final { get; private set; }

    /// <summary>Looks at the job at <paramref name="now"/>; returns true when <see cref="WritesBlocking"/> changed.</summary>
    /// <param name="now">Time since any fixed origin; never going back.</param>
    /// <param name="ready">The job has been READY (in sync) at least once.</param>
    /// <param name="progress">The rates measured since the last mode change.</param>
    public bool Evaluate(TimeSpan now, bool ready, MirrorProgress progress)
    {
        if (Final)
        {
            return false;
        }

        if (ready)
        {
            Final = true;
            return Switch(blocking: true);
        }

        if (WritesBlocking)
        {
            if (now < _blockingUntil)
            {
                return false;
            }

            // Probe: background again, measured afresh.
            _losingSince = null;
            _gainingSince = null;
            return Switch(blocking: false);
        }

        var losing = Losing(progress);
        if (losing is null)
        {
            return false;
        }

        if (losing.Value)
        {
            _gainingSince = null;
            _losingSince ??= now;
            if (now - _losingSince < Hold)
            {
                return false;
            }

            _blockingUntil = now + _dwell;
            _dwell = TimeSpan.FromTicks(Math.Min(_dwell.Ticks * 2, MaxDwell.Ticks));
            return Switch(blocking: true);
        }

        _losingSince = null;
        _gainingSince ??= now;
        if (now - _gainingSince >= Hold)
        {
            // Background keeps up: the writers slowed down (or never were fast), so the next bad spell
            // starts with a short dwell again.
            _dwell = FirstDwell;
        }

        return false;
    }

    /// <summary>Null while the rates are not measured; true when the copy does not beat the dirty rate by the margin.</summary>
    static bool? Losing(MirrorProgress progress) =>
        !progress.Measured ? null : progress.Remaining > 0 && progress.CopyRate < progress.DirtyRate * Margin;

    bool Switch(bool blocking)
    {
        if (WritesBlocking == blocking)
        {
            return false;
        }

        WritesBlocking = blocking;
        return true;
    }
}
