namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// Host byte ranges that data requests are reading or writing right now, outside the metadata lock.
/// The allocator does not hand out a free cluster that is still in this set: a request that looked a
/// cluster up before a discard freed it may still be writing there, and reusing the cluster for other
/// guest data would let that late write land in the wrong place (QEMU keeps the same guard in its
/// in-flight write counters).
/// </summary>
/// <remarks>Ranges are registered under the metadata lock and released without it, so they have their own
/// small lock. The set holds at most one range per request in flight, so a linear scan is cheap.</remarks>
internal sealed class Qcow2HostRanges
{
    readonly Lock _lock = new();
    long[] _starts = new long[16];
    long[] _ends = new long[16];
    int _used;

    /// <summary>Adds [start, end); returns the slot to pass to <see cref="Release"/>.</summary>
    public int Register(long start, long end)
    {
        lock (_lock)
        {
            for (var i = 0; i < _used; i++)
            {
                if (_ends[i] == 0)
                {
                    _starts[i] = start;
                    _ends[i] = end;
                    return i;
                }
            }

            if (_used == _starts.Length)
            {
                Array.Resize(ref _starts, _used * 2);
                Array.Resize(ref _ends, _used * 2);
            }

            _starts[_used] = start;
            _ends[_used] = end;
            return _used++;
        }
    }

    public void Release(int slot)
    {
        lock (_lock)
        {
            _starts[slot] = 0;
            _ends[slot] = 0;
            while (_used > 0 && _ends[_used - 1] == 0)
            {
                _used--;
            }
        }
    }

    /// <summary>True when some registered range shares a byte with [start, end).</summary>
    public bool Overlaps(long start, long end)
    {
        lock (_lock)
        {
            for (var i = 0; i < _used; i++)
            {
                if (_ends[i] != 0 && _starts[i] < end && start < _ends[i])
                {
                    return true;
                }
            }

            return false;
        }
    }
}
