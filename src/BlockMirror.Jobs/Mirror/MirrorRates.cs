namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// A mirror's copy rate and dirty rate over a sliding window: samples of two ever-growing counters (bytes
/// copied, bytes newly dirtied), at most one per <see cref="SampleInterval"/>, in a fixed ring. Time is
/// passed in, so that the job reads it from its <see cref="TimeProvider"/> and tests from nowhere at all.
/// </summary>
/// <remarks>
/// A rate is taken from the newest sample at least a window old (the oldest kept, while the job is younger
/// than that) to the values now, so it spans a window or more: a job that stopped moving shows zero, not the
/// rate it had before. Sampling is O(1), allocates nothing, and takes one short lock: the copy loop and the
/// monitor both measure.
/// </remarks>
public sealed class MirrorRates
{
    public static readonly TimeSpan DefaultWindow = TimeSpan.FromSeconds(5);

    /// <summary>Below this span rates are reported but not trusted (<see cref="MirrorProgress.Measured"/> false).</summary>
    public static readonly TimeSpan MinSpan = TimeSpan.FromSeconds(1);

    readonly Lock _lock = new();
    readonly Sample[] _ring;
    readonly TimeSpan _window;
    int _first;
    int _count;

    public MirrorRates()
        : this(DefaultWindow)
    {
    }

    public MirrorRates(TimeSpan window)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(window, TimeSpan.Zero);
        _window = window;
        // A window's worth of samples, plus the one just older than the window and the newest.
        _ring = new Sample[(int)(window / SampleInterval) + 2];
    }

    public static TimeSpan SampleInterval { get; } = TimeSpan.FromMilliseconds(250);

    /// <summary>Forgets every sample: what was measured no longer says what comes (the job starts copying, or changed its mode).</summary>
    public void Restart()
    {
        lock (_lock)
        {
            _count = 0;
        }
    }

    /// <summary>Records the counters at <paramref name="now"/> and returns the rates over the window ending there.</summary>
    /// <param name="now">Time since any fixed origin; never going back.</param>
    /// <param name="copied">Bytes copied so far (only ever grows).</param>
    /// <param name="dirtied">Bytes newly dirtied so far (only ever grows).</param>
    /// <param name="remaining">Bytes left to copy now.</param>
    public MirrorProgress Measure(TimeSpan now, long copied, long dirtied, long remaining)
    {
        lock (_lock)
        {
            if (_count == 0 || now - Newest.Time >= SampleInterval)
            {
                if (_count == _ring.Length)
                {
                    _first = (_first + 1) % _ring.Length;
                    _count--;
                }

                _ring[(_first + _count) % _ring.Length] = new Sample(now, copied, dirtied);
                _count++;
            }

            // Keep one sample at or before the window's start, no more.
            while (_count > 1 && _ring[(_first + 1) % _ring.Length].Time <= now - _window)
            {
                _first = (_first + 1) % _ring.Length;
                _count--;
            }

            var oldest = _ring[_first];
            var span = now - oldest.Time;
            if (span <= TimeSpan.Zero)
            {
                return new MirrorProgress(remaining, 0, 0, Measured: false);
            }

            var seconds = span.TotalSeconds;
            return new MirrorProgress(remaining, (copied - oldest.Copied) / seconds, (dirtied - oldest.Dirtied) / seconds, span >= MinSpan);
        }
    }

    Sample Newest => _ring[(_first + _count - 1) % _ring.Length];

    readonly record struct Sample(TimeSpan Time, long Copied, long Dirtied);
}
