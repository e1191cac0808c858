namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// What a mirror has left and how fast that changes, with the forecast that follows: the job gains on its
/// writers only while it copies faster than they dirty the source, and then needs
/// remaining / (copy rate - dirty rate) to be in sync.
/// </summary>
/// <param name="Remaining">Bytes dirty or in flight now: what must still reach the target.</param>
/// <param name="CopyRate">Bytes per second copied (or zeroed) onto the target over the window.</param>
/// <param name="DirtyRate">Bytes per second of chunks newly dirtied over the window: writers', and the job's own retries.</param>
/// <param name="Measured">False until the window spans long enough for the rates to mean something.</param>
/// <param name="Copying">False while the job has not started copying: it is still finding what to copy, and
/// nothing remaining then does not mean in sync.</param>
public readonly record struct MirrorProgress(long Remaining, double CopyRate, double DirtyRate, bool Measured, bool Copying = true)
{
    /// <summary>
    /// True when the job is in sync or copies faster than the source is dirtied, false when it does not
    /// (paused, stalled, or outrun by its writers: it will not converge at this rate), null before the
    /// rates are measured or the copy has started.
    /// </summary>
    public bool? Converging => !Copying ? null : Remaining == 0 ? true : Measured ? CopyRate > DirtyRate : null;

    /// <summary>Time to be in sync at the current rates; null when the job does not converge or is not measured yet.</summary>
    public TimeSpan? Eta => Converging != true
        ? null
        : Remaining == 0
            ? TimeSpan.Zero
            : TimeSpan.FromSeconds(Math.Min(Remaining / (CopyRate - DirtyRate), MaxEta.TotalSeconds));

    /// <summary>Forecasts beyond this are clamped: a rate barely above the dirty rate would otherwise overflow a TimeSpan.</summary>
    public static readonly TimeSpan MaxEta = TimeSpan.FromDays(365);
}
