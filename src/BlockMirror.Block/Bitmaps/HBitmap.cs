using System.Numerics;

namespace BlockMirror.Block.Bitmaps;

/// <summary>
/// A hierarchical bitmap (after QEMU's HBitmap): an array of bits with summary levels above it, so
/// that finding the next set bit skips clean regions in big steps.
/// </summary>
/// <remarks>
/// <para>Layout: level 0 holds the bits, in 64-bit words. In every level above, bit N is set iff word N
/// of the level below is non-zero. Levels are added until one word covers everything.</para>
/// <para>Cost model, for n bits: <see cref="NextSet"/> is O(log64 n) word reads (4 for 16 Mi bits, the
/// bitmap of 1 TiB at 64 KiB granularity); setting or clearing k bits touches k/64 words plus at most
/// one summary update per level per word whose emptiness changed; <see cref="Count"/> is O(1) (a running
/// total); memory is n/8 bytes plus under 2% for the summaries (8 MiB for 4 TiB at 64 KiB).</para>
/// <para>Not thread-safe; <see cref="DirtyBitmap"/> adds the lock.</para>
/// </remarks>
public sealed class HBitmap
{
    const int WordBits = 64;
    const int WordShift = 6;

    ulong[][] _levels = [];
    long _bits;
    long _count;

    public HBitmap(long bits)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bits);
        Allocate(bits);
    }

    /// <summary>Number of bits.</summary>
    public long Size => _bits;

    /// <summary>Number of set bits, kept as a running total.</summary>
    public long Count => _count;

    /// <summary>Number of levels, the bit level included.</summary>
    internal int Depth => _levels.Length;

    /// <summary>
    /// Words <see cref="NextSet"/> and <see cref="NextClear"/> have read, ever: what the cost model above
    /// promises, for tests to hold them to (one add per word; the callers hold a lock anyway).
    /// </summary>
    internal long WordsRead { get; private set; }

    void Allocate(long bits)
    {
        _bits = bits;
        var levels = new List<ulong[]>();
        var words = Math.Max(1, (bits + WordBits - 1) >> WordShift);
        levels.Add(new ulong[words]);
        while (words > 1)
        {
            words = (words + WordBits - 1) >> WordShift;
            levels.Add(new ulong[words]);
        }

        _levels = [.. levels];
        _count = 0;
    }

    public bool Get(long bit)
    {
        if ((ulong)bit >= (ulong)_bits)
        {
            return false;
        }

        return (_levels[0][bit >> WordShift] & (1UL << (int)(bit & 63))) != 0;
    }

    /// <summary>Sets bits [first, first + count).</summary>
    public void Set(long first, long count)
    {
        ClampRange(ref first, ref count);
        if (count == 0)
        {
            return;
        }

        var bottom = _levels[0];
        var last = first + count - 1;
        for (var word = first >> WordShift; word <= last >> WordShift; word++)
        {
            var mask = RangeMask(word, first, last);
            var old = bottom[word];
            var updated = old | mask;
            if (updated == old)
            {
                continue;
            }

            bottom[word] = updated;
            _count += BitOperations.PopCount(updated & ~old);
            if (old == 0)
            {
                MarkSummary(word);
            }
        }
    }

    /// <summary>Clears bits [first, first + count).</summary>
    public void Reset(long first, long count)
    {
        ClampRange(ref first, ref count);
        if (count == 0)
        {
            return;
        }

        var bottom = _levels[0];
        var last = first + count - 1;
        for (var word = first >> WordShift; word <= last >> WordShift; word++)
        {
            var mask = RangeMask(word, first, last);
            var old = bottom[word];
            var updated = old & ~mask;
            if (updated == old)
            {
                continue;
            }

            bottom[word] = updated;
            _count -= BitOperations.PopCount(old & mask);
            if (updated == 0)
            {
                ClearSummary(word);
            }
        }
    }

    /// <summary>Sets every bit.</summary>
    public void SetAll() => Set(0, _bits);

    /// <summary>Clears every bit.</summary>
    public void ResetAll()
    {
        foreach (var level in _levels)
        {
            Array.Clear(level);
        }

        _count = 0;
    }

    /// <summary>The first set bit at or after <paramref name="from"/>, or -1.</summary>
    public long NextSet(long from)
    {
        if (from < 0)
        {
            from = 0;
        }

        if (from >= _bits)
        {
            return -1;
        }

        // Climb: look in the current word of each level, masked to positions at or after ours; when a
        // level's word is empty, continue from the next word one level up.
        var level = 0;
        var position = from;
        while (true)
        {
            var words = _levels[level];
            var index = position >> WordShift;
            if (index >= words.Length)
            {
                return -1;
            }

            WordsRead++;
            var word = words[index] & (ulong.MaxValue << (int)(position & 63));
            if (word != 0)
            {
                position = (index << WordShift) + BitOperations.TrailingZeroCount(word);
                break;
            }

            if (level == _levels.Length - 1)
            {
                return -1;
            }

            level++;
            position = index + 1;
        }

        // Descend: a set summary bit promises a non-zero word below; take its lowest bit each time.
        while (level > 0)
        {
            level--;
            WordsRead++;
            var word = _levels[level][position];
            position = (position << WordShift) + BitOperations.TrailingZeroCount(word);
        }

        return position < _bits ? position : -1;
    }

    /// <summary>
    /// The first clear bit in [<paramref name="from"/>, <paramref name="limit"/>), or the limit (at most
    /// <see cref="Size"/>) when none is.
    /// </summary>
    /// <remarks>Linear in the words scanned, 64 bits a word: callers bound the run they look at.</remarks>
    public long NextClear(long from, long limit = long.MaxValue)
    {
        if (from < 0)
        {
            from = 0;
        }

        var end = Math.Min(_bits, limit);
        var bottom = _levels[0];
        var position = from;
        while (position < end)
        {
            var index = position >> WordShift;
            WordsRead++;
            var word = ~bottom[index] & (ulong.MaxValue << (int)(position & 63));
            if (word != 0)
            {
                var found = (index << WordShift) + BitOperations.TrailingZeroCount(word);
                return Math.Min(found, end);
            }

            position = (index + 1) << WordShift;
        }

        return end;
    }

    /// <summary>Changes the number of bits; bits past a shrunk end are dropped, new bits are clear.</summary>
    public void Resize(long bits)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bits);
        if (bits == _bits)
        {
            return;
        }

        var oldBottom = _levels[0];
        var keep = Math.Min(bits, _bits);
        Allocate(bits);
        var bottom = _levels[0];
        var fullWords = keep >> WordShift;
        for (long word = 0; word < fullWords; word++)
        {
            if (oldBottom[word] != 0)
            {
                bottom[word] = oldBottom[word];
                _count += BitOperations.PopCount(oldBottom[word]);
                MarkSummary(word);
            }
        }

        var tail = (int)(keep & 63);
        if (tail != 0)
        {
            var word = oldBottom[fullWords] & ((1UL << tail) - 1);
            if (word != 0)
            {
                bottom[fullWords] = word;
                _count += BitOperations.PopCount(word);
                MarkSummary(fullWords);
            }
        }
    }

    void ClampRange(ref long first, ref long count)
    {
        if (first < 0)
        {
            count += first;
            first = 0;
        }

        if (count <= 0 || first >= _bits)
        {
            count = 0;
            return;
        }

        count = Math.Min(count, _bits - first);
    }

    /// <summary>The bits of word <paramref name="word"/> that fall inside [first, last].</summary>
    static ulong RangeMask(long word, long first, long last)
    {
        var wordStart = word << WordShift;
        var low = first > wordStart ? (int)(first - wordStart) : 0;
        var high = last < wordStart + 63 ? (int)(last - wordStart) : 63;
        var upper = high == 63 ? ulong.MaxValue : (1UL << (high + 1)) - 1;
        return upper & (ulong.MaxValue << low);
    }

    /// <summary>Word <paramref name="word"/> of level 0 became non-zero: set its summary bits upwards.</summary>
    void MarkSummary(long word)
    {
        for (var level = 1; level < _levels.Length; level++)
        {
            var words = _levels[level];
            var index = word >> WordShift;
            var bit = 1UL << (int)(word & 63);
            var old = words[index];
            words[index] = old | bit;
            if (old != 0)
            {
                return;
            }

            word = index;
        }
    }

    /// <summary>Word <paramref name="word"/> of level 0 became zero: clear its summary bits upwards.</summary>
    void ClearSummary(long word)
    {
        for (var level = 1; level < _levels.Length; level++)
        {
            var words = _levels[level];
            var index = word >> WordShift;
            var updated = words[index] & ~(1UL << (int)(word & 63));
            words[index] = updated;
            if (updated != 0)
            {
                return;
            }

            word = index;
        }
    }
}
