namespace BlockMirror.Jobs;

/// <summary>
/// Bytes-per-second limiting in time slices (QEMU's ratelimit): work is counted against the quota of
/// the current slice; once a slice's quota is used up, the caller is told how long to wait until the
/// slices the work has claimed are over. Speed 0 means unlimited. Reads time from a
/// <see cref="TimeProvider"/>, so tests run on fake time.
/// </summary>
/// <remarks>
/// Over any run, copying B bytes at speed S takes at least B/S minus one slice: every slice lets at
/// most its quota through before the caller must wait out the slices it has overdrawn.
/// </remarks>
public sealed class RateLimiter(TimeProvider time, TimeSpan slice)
{
    /// <summary>QEMU's slice for block jobs.</summary>
    public static readonly TimeSpan DefaultSlice = TimeSpan.FromMilliseconds(100);

    readonly Lock _lock = new();
    long _speed;
    long _sliceQuota;
    long _dispatched;
    long _sliceStart;
    long _sliceEnd;

    public RateLimiter(TimeProvider time)
        : this(time, DefaultSlice)
    {
    }

    /// <summary>Bytes per second; 0 = unlimited.</summary>
    public long Speed
    {
        get
        {
            lock (_lock)
            {
                return _speed;
            }
        }
    }

    /// <summary>Changes the speed; takes effect for work counted from now on.</summary>
    public void SetSpeed(long bytesPerSecond)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytesPerSecond);
        lock (_lock)
        {
            _speed = bytesPerSecond;
            _sliceQuota = bytesPerSecond == 0 ? 0 : Math.Max(1, (long)(bytesPerSecond * slice.TotalSeconds));
        }
    }

    long Now => (long)time.GetElapsedTime(0, time.GetTimestamp()).Ticks;

    /// <summary>Counts <paramref name="bytes"/> of work and returns how long to wait before more.</summary>
    public TimeSpan CalculateDelay(long bytes)
    {
        lock (_lock)
        {
            if (_speed == 0)
            {
                return TimeSpan.Zero;
            }

            var now = Now;
            if (_sliceEnd < now)
            {
                // The previous (possibly extended) slice is over: start accounting afresh.
                _sliceStart = now;
                _sliceEnd = now + slice.Ticks;
                _dispatched = 0;
            }

            _dispatched += bytes;
            if (_dispatched < _sliceQuota)
            {
                return TimeSpan.Zero;
            }

            // Quota used up: the work claims the time it needs at this speed, and the caller waits until
            // then. Fractions of a slice count (QEMU computes delay_slices as a double): rounding down to
            // whole slices let the excess through for free whenever the caller woke after the slice end
            // and accounting started afresh, which is every time with a real timer.
            var slices = (double)_dispatched / _sliceQuota;
            _sliceEnd = _sliceStart + (long)(slices * slice.Ticks);
            return TimeSpan.FromTicks(Math.Max(0, _sliceEnd - now));
        }
    }
}
