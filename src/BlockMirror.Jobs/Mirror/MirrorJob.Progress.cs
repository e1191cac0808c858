namespace BlockMirror.Jobs.Mirror;

/// <summary>The mirror's measured progress: what is left, how fast it is copied and dirtied, and the forecast.</summary>
public sealed partial class MirrorJob
{
    readonly MirrorRates _rates = new();

    // Set once the copy loop starts: the initial dirtying marks the whole source in a moment, and a dirty
    // rate measured over it would say nothing about the writers.
    volatile bool _measuring;

    /// <summary>
    /// Bytes left to copy (dirty or in flight), the copy and dirty rates over the last few seconds, and
    /// whether the job gains on its writers. Unmeasured before the copy starts. Safe from any thread.
    /// </summary>
    public MirrorProgress GetProgress()
    {
        var remaining = _dirty.DirtyBytes + _engine.Snapshot().BytesInFlight;

        return _measuring
            ? _rates.Measure(Time.GetElapsedTime(0, Time.GetTimestamp()), ProgressCurrent, _dirty.NewlyDirtiedBytes, remaining)
            : new MirrorProgress(remaining, 0, 0, Measured: false, Copying: false);
    }

    /// <summary>The copy starts: rates are measured from now.</summary>
    void StartMeasuring()
    {
        _rates.Restart();
        _measuring = true;
    }
}
