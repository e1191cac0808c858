using BlockMirror.Block.Buffers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>Where request buffers come from; this decides which I/O path a driver takes.</summary>
enum BufferKind
{
    /// <summary>Slices of a managed array at a small random offset (any address).</summary>
    Heap,

    /// <summary>4 KiB aligned native memory: O_DIRECT can use it as it is.</summary>
    Aligned,

    /// <summary>Slices of a managed array at offset 1: never aligned, so O_DIRECT must bounce.</summary>
    Misaligned,

    /// <summary>Aligned or misaligned, chosen per request.</summary>
    Mixed,
}

/// <summary>What write-zeroes does to the block status of the whole blocks it covers.</summary>
enum ZeroedStatus
{
    /// <summary>Nothing can be said (the blocks may stay allocated).</summary>
    Unknown,

    /// <summary>With <see cref="RequestFlags.MayUnmap"/> whole blocks become holes, reported Zero.</summary>
    ZeroWhenMayUnmap,

    /// <summary>Whole blocks are reported Zero whatever the flags.</summary>
    AlwaysZero,
}

/// <summary>What the model must know about the driver under test.</summary>
sealed record ModelProfile
{
    /// <summary>Device length in bytes.</summary>
    public required long Size { get; init; }

    /// <summary>The node's request alignment; requests are made multiples of it.</summary>
    public int Alignment { get; init; } = 1;

    /// <summary>What never-written bytes read as.</summary>
    public byte InitialByte { get; init; }

    /// <summary>Discarded ranges read zeroes; otherwise discard keeps the old data exactly.</summary>
    public bool DiscardZeroes { get; init; } = true;

    /// <summary>Allocation unit: discard and may-unmap zeroing free whole units only.</summary>
    public long Granularity { get; init; } = 4096;

    public ZeroedStatus WriteZeroesStatus { get; init; }

    /// <summary>Discarded whole blocks are reported Zero (holes).</summary>
    public bool DiscardReportsZero { get; init; }

    /// <summary>A fresh device is reported Zero everywhere.</summary>
    public bool StartsZero { get; init; }

    /// <summary>Never-written bytes must be reported Data (they are not zeroes).</summary>
    public bool NeverWrittenIsData { get; init; }

    /// <summary>Every answer has OffsetValid with HostOffset equal to the queried offset.</summary>
    public bool HostOffsetIsOffset { get; init; }

    public BufferKind Buffers { get; init; } = BufferKind.Heap;

    /// <summary>Share of reads and writes (in percent) sent as scatter/gather lists.</summary>
    public int VectorPercent { get; init; }

    /// <summary>Share of vectored requests (in percent) with more than 1024 segments (Linux IOV_MAX).</summary>
    public int ManySegmentsPercent { get; init; }

    /// <summary>Discard releases whole granules only: a partial granule at either end keeps its data.</summary>
    public bool DiscardWholeGranulesOnly { get; init; }

    /// <summary>
    /// A format that may leave ranges unallocated (falling through to a backing file, or reading as zeroes
    /// without one): its answers need not be Allocated.
    /// </summary>
    public bool MayBeUnallocated { get; init; }

    /// <summary>Share of steps (in percent) that are flushes; each is an fdatasync on a file.</summary>
    public int FlushPercent { get; init; } = 3;
}

/// <summary>
/// Sends random requests through a root edge and replays each one on a <see cref="ByteModel"/>: reads
/// must return the model's bytes, and block status must agree with it. The model of block status is
/// conservative: it only insists on what the driver promises (Zero runs read zeroes; blocks freed whole
/// are holes; never-written garbage is data), never on how a driver chooses to split its answers.
/// </summary>
sealed class ModelRunner : IDisposable
{
    const int HistoryLength = 16;
    const int SegmentLimit = 1024;

    readonly NodeEdge _disk;
    readonly ModelProfile _profile;
    readonly Random _random;
    readonly ByteModel _model;

    // Per granule: the driver must report it Zero (a hole, a zero page) until something touches it again.
    readonly bool[] _mustReportZero;

    // Per byte, only when never-written bytes are garbage: still never written, so must be reported Data.
    readonly bool[]? _neverWritten;

    readonly AlignedMemory _aligned;
    readonly byte[] _heap;
    readonly Queue<string> _history = new();
    int _step;

    public ModelRunner(NodeEdge disk, ModelProfile profile, int seed)
    {
        Assert.Equal(profile.Size, disk.Node.Length);
        Assert.Equal(profile.Alignment, disk.Node.Limits.RequestAlignment);
        _disk = disk;
        _profile = profile;
        _random = new Random(seed);
        _model = new ByteModel(profile.Size);
        if (profile.InitialByte != 0)
        {
            Array.Fill(_model.Bytes, profile.InitialByte);
        }

        _mustReportZero = new bool[(profile.Size + profile.Granularity - 1) / profile.Granularity];
        if (profile.StartsZero)
        {
            Array.Fill(_mustReportZero, true);
        }

        if (profile.NeverWrittenIsData)
        {
            _neverWritten = new bool[profile.Size];
            Array.Fill(_neverWritten, true);
        }

        _aligned = new AlignedMemory((int)profile.Size + 2 * 4096, 4096);
        _heap = new byte[profile.Size + 16];
    }

    public int Reads { get; private set; }

    public int Writes { get; private set; }

    public int VectoredRequests { get; private set; }

    /// <summary>Vectored requests with more than 1024 segments.</summary>
    public int ManySegmentRequests { get; private set; }

    public int MisalignedBufferRequests { get; private set; }

    public int WriteZeroes { get; private set; }

    public int Discards { get; private set; }

    public int StatusQueries { get; private set; }

    public ByteModel Model => _model;

    public void Dispose() => ((IDisposable)_aligned).Dispose();

    /// <summary>Runs <paramref name="steps"/> random requests, comparing the whole device every <paramref name="checkEvery"/> steps and at the end.</summary>
    public async Task RunAsync(int steps, int checkEvery)
    {
        for (var i = 0; i < steps; i++)
        {
            _step++;
            try
            {
                await StepAsync();
                if (_step % checkEvery == 0)
                {
                    await CheckAllAsync();
                }
            }
            catch (Exception ex) when (ex is not Xunit.Sdk.XunitException)
            {
                throw new InvalidOperationException($"step {_step} failed: {ex.Message}\n{History}", ex);
            }
        }

        await CheckAllAsync();
    }

    string History => "last requests, oldest first:\n  " + string.Join("\n  ", _history);

    void Record(string what)
    {
        if (_history.Count == HistoryLength)
        {
            _history.Dequeue();
        }

        _history.Enqueue($"#{_step} {what}");
    }

    Xunit.Sdk.XunitException Failure(string message) => new($"step {_step}: {message}\n{History}");

    Task StepAsync()
    {
        var roll = _random.Next(100);
        var flush = _profile.FlushPercent;
        return roll switch
        {
            < 25 => ReadAsync(),
            < 52 => WriteAsync(),
            < 67 => WriteZeroesAsync(),
            < 80 => DiscardAsync(),
            _ when roll < 80 + flush => FlushAsync(),
            _ => BlockStatusAsync(),
        };
    }

    // ----- Choosing requests -----

    /// <summary>A random range: small, medium, whole granules, or large; aligned to the node's alignment.</summary>
    (long Offset, long Length) PickRange(long minLength = 1)
    {
        var size = _profile.Size;
        long offset;
        long length;
        var kind = _random.Next(20);
        if (kind < 5 && minLength <= _profile.Granularity)
        {
            // Whole granules, so that blocks are freed whole; sometimes up to the device end.
            var granule = _profile.Granularity;
            var granules = size / granule;
            var first = _random.NextInt64(0, granules);
            offset = first * granule;
            length = _random.Next(4) == 0 ? size - offset : _random.NextInt64(1, Math.Min(8, granules - first) + 1) * granule;
        }
        else
        {
            length = kind switch
            {
                < 12 => _random.NextInt64(1, 1025),
                < 18 => _random.NextInt64(1, 65537),
                _ => _random.NextInt64(1, size + 1),
            };
            length = Math.Clamp(length, minLength, size);
            offset = _random.Next(8) == 0 ? size - length : _random.NextInt64(0, size - length + 1);
        }

        var alignment = _profile.Alignment;
        if (alignment > 1)
        {
            offset = offset / alignment * alignment;
            length = Math.Min((length + alignment - 1) / alignment * alignment, size - offset);
        }

        return (offset, length);
    }

    /// <summary>A buffer of the profile's kind; its contents are random, so a read that fills nothing shows.</summary>
    Memory<byte> Buffer(int length, out string kind)
    {
        var choice = _profile.Buffers;
        if (choice == BufferKind.Mixed)
        {
            choice = _random.Next(2) == 0 ? BufferKind.Aligned : BufferKind.Misaligned;
        }

        Memory<byte> buffer;
        switch (choice)
        {
            case BufferKind.Aligned:
                kind = "aligned";
                buffer = _aligned.Memory[..length];
                break;
            case BufferKind.Misaligned:
                kind = "misaligned";
                MisalignedBufferRequests++;
                buffer = _heap.AsMemory(1, length);
                break;
            default:
                var start = _random.Next(8);
                kind = $"heap+{start}";
                buffer = _heap.AsMemory(start, length);
                break;
        }

        FillRandom(buffer.Span);
        return buffer;
    }

    /// <summary>Fills with xorshift64* output seeded from the test's generator: seeded <see cref="Random"/> is byte-at-a-time slow.</summary>
    void FillRandom(Span<byte> span)
    {
        var state = (ulong)_random.NextInt64() | 1;
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(span);
        for (var i = 0; i < words.Length; i++)
        {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            words[i] = state * 0x2545F4914F6CDD1DUL;
        }

        for (var i = words.Length * sizeof(ulong); i < span.Length; i++)
        {
            span[i] = (byte)_random.Next(256);
        }
    }

    /// <summary>Cuts a buffer into segments: a few, or more than the kernel takes in one call.</summary>
    List<Memory<byte>> Split(Memory<byte> buffer, bool many, out string description)
    {
        // With O_DIRECT, half the lists are cut at aligned points (every segment usable as it is), the
        // other half anywhere (the driver must bounce).
        var grain = _profile.Alignment > 1 && !many && _random.Next(2) == 0 ? _profile.Alignment : 1;
        var slots = buffer.Length / grain;
        var pieces = many ? Math.Min(slots, _random.Next(SegmentLimit + 1, 2 * SegmentLimit + 1)) : Math.Min(slots, _random.Next(1, 33));

        // pieces - 1 distinct cut points among 1 .. slots - 1 (partial Fisher-Yates).
        var candidates = Enumerable.Range(1, slots - 1).ToArray();
        for (var i = 0; i < pieces - 1; i++)
        {
            var j = _random.Next(i, candidates.Length);
            (candidates[i], candidates[j]) = (candidates[j], candidates[i]);
        }

        var cuts = candidates[..(pieces - 1)];
        Array.Sort(cuts);
        var segments = new List<Memory<byte>>(pieces);
        var previous = 0;
        foreach (var cut in cuts)
        {
            segments.Add(buffer[(previous * grain)..(cut * grain)]);
            previous = cut;
        }

        segments.Add(buffer[(previous * grain)..]);
        description = $"vec({segments.Count}{(grain > 1 ? ", aligned cuts" : "")})";
        return segments;
    }

    bool WantVector() => _profile.VectorPercent > 0 && _random.Next(100) < _profile.VectorPercent;

    bool WantManySegments() => _random.Next(100) < _profile.ManySegmentsPercent;

    // ----- Requests -----

    async Task ReadAsync()
    {
        Reads++;
        var vector = WantVector();
        var many = vector && WantManySegments();
        var (offset, length) = PickRange(many ? 2 * SegmentLimit + 1 : 1);
        var buffer = Buffer((int)length, out var kind);
        if (vector)
        {
            var segments = Split(buffer, many, out var description);
            Record($"read {offset}+{length} {kind} {description}");
            CountVector(segments.Count);
            await _disk.ReadVectorAsync(offset, segments);
        }
        else
        {
            Record($"read {offset}+{length} {kind}");
            await _disk.ReadAsync(offset, buffer);
        }

        Compare(offset, buffer.Span, "read");
    }

    async Task WriteAsync()
    {
        Writes++;
        var vector = WantVector();
        var many = vector && WantManySegments();
        var (offset, length) = PickRange(many ? 2 * SegmentLimit + 1 : 1);
        var buffer = Buffer((int)length, out var kind);
        var flags = _random.Next(20) == 0 ? RequestFlags.Fua : RequestFlags.None;
        if (vector)
        {
            var segments = Split(buffer, many, out var description);
            Record($"write {offset}+{length} {kind} {description} {flags}");
            CountVector(segments.Count);
            await _disk.WriteVectorAsync(offset, [.. segments.Select(s => (ReadOnlyMemory<byte>)s)], flags);
        }
        else
        {
            Record($"write {offset}+{length} {kind} {flags}");
            await _disk.WriteAsync(offset, buffer, flags);
        }

        _model.Write(offset, buffer.Span);
        Touch(offset, length);
        await ReadBackAsync(offset, length);
    }

    void CountVector(int segments)
    {
        VectoredRequests++;
        if (segments > SegmentLimit)
        {
            ManySegmentRequests++;
        }
    }

    async Task WriteZeroesAsync()
    {
        WriteZeroes++;
        var (offset, length) = PickRange();
        var flags = RequestFlags.None;
        if (_random.Next(2) == 0)
        {
            flags |= RequestFlags.MayUnmap;
        }

        if (_random.Next(10) == 0)
        {
            flags |= RequestFlags.NoFallback;
        }

        if (_random.Next(20) == 0)
        {
            flags |= RequestFlags.Fua;
        }

        Record($"write-zeroes {offset}+{length} {flags}");
        try
        {
            await _disk.WriteZeroesAsync(offset, length, flags);
        }
        catch (BlockIOException ex) when (ex.Errno == BlockErrno.ENOTSUP && (flags & RequestFlags.NoFallback) != 0)
        {
            // The file system cannot zero without writing; a refused request must have changed nothing.
            await ReadBackAsync(offset, length);
            return;
        }

        _model.Zero(offset, length);
        Written(offset, length);
        var freed = _profile.WriteZeroesStatus switch
        {
            ZeroedStatus.AlwaysZero => true,
            ZeroedStatus.ZeroWhenMayUnmap => (flags & RequestFlags.MayUnmap) != 0,
            _ => false,
        };
        if (freed)
        {
            Free(offset, length);
        }
        else
        {
            Touch(offset, length);
        }

        await ReadBackAsync(offset, length);
    }

    async Task DiscardAsync()
    {
        Discards++;
        var (offset, length) = PickRange();
        Record($"discard {offset}+{length}");
        await _disk.DiscardAsync(offset, length);
        if (_profile.DiscardWholeGranulesOnly)
        {
            // Only the whole granules inside the range change; the partial ones at its ends keep their data.
            var granule = _profile.Granularity;
            var end = offset + length;
            offset = (offset + granule - 1) / granule * granule;
            end = end == _profile.Size ? end : end / granule * granule;
            length = Math.Max(0, end - offset);
        }

        if (_profile.DiscardZeroes)
        {
            _model.Zero(offset, length);
            Written(offset, length);
        }

        if (_profile.DiscardReportsZero)
        {
            Free(offset, length);
        }
        else if (_profile.DiscardZeroes)
        {
            Touch(offset, length);
        }

        await ReadBackAsync(offset, length);
    }

    async Task FlushAsync()
    {
        Record("flush");
        await _disk.FlushAsync();
    }

    async Task BlockStatusAsync()
    {
        StatusQueries++;
        var size = _profile.Size;
        var offset = _random.NextInt64(0, size);
        var hint = _random.Next(4) == 0 ? size : _random.NextInt64(1, size - offset + 1);
        Record($"block-status {offset}+{hint}");
        var status = await _disk.GetBlockStatusAsync(offset, hint);
        var expectedMax = Math.Min(hint, size - offset);
        if (status.Length <= 0 || status.Length > expectedMax)
        {
            throw Failure($"block status at {offset} for {hint} answered {status}: the length must be in 1..{expectedMax}");
        }

        CheckRun(offset, status);
        var granule = offset / _profile.Granularity;
        if (_mustReportZero[granule] && !status.IsZero)
        {
            throw Failure($"block status at {offset} answered {status}, but block {granule} was freed whole and must be reported Zero");
        }
    }

    // ----- Model bookkeeping -----

    /// <summary>Bytes changed by something other than freeing whole blocks: they may be allocated now.</summary>
    void Touch(long offset, long length)
    {
        var granule = _profile.Granularity;
        for (var g = offset / granule; g * granule < offset + length; g++)
        {
            _mustReportZero[g] = false;
        }

        Written(offset, length);
    }

    /// <summary>Whole granules inside the range are freed (reported Zero from now on); partial ones may not be.</summary>
    void Free(long offset, long length)
    {
        var granule = _profile.Granularity;
        var end = offset + length;
        for (var g = offset / granule; g * granule < end; g++)
        {
            var start = g * granule;
            _mustReportZero[g] = start >= offset && start + granule <= end;
        }
    }

    void Written(long offset, long length)
    {
        if (_neverWritten is not null)
        {
            _neverWritten.AsSpan((int)offset, (int)length).Clear();
        }
    }

    // ----- Checks -----

    void Compare(long offset, ReadOnlySpan<byte> actual, string what)
    {
        var difference = _model.FirstDifference(actual, offset);
        if (difference >= 0)
        {
            throw Failure($"{what} at {offset}+{actual.Length}: byte {difference} reads 0x{actual[(int)(difference - offset)]:x2}, the model has 0x{_model.Bytes[difference]:x2}");
        }
    }

    /// <summary>Reads the range again (with a margin on byte-granular devices) and compares it with the model.</summary>
    async Task ReadBackAsync(long offset, long length)
    {
        if (_profile.Alignment == 1)
        {
            var before = Math.Min(offset, _random.Next(0, 64));
            var after = Math.Min(_profile.Size - offset - length, _random.Next(0, 64));
            offset -= before;
            length += before + after;
        }

        var buffer = Buffer((int)length, out _);
        await _disk.ReadAsync(offset, buffer);
        Compare(offset, buffer.Span, "read-back");
    }

    /// <summary>What must hold for any answer: Zero runs read zeroes, garbage is Data, the flags are complete.</summary>
    void CheckRun(long offset, BlockStatus status)
    {
        if (!status.IsAllocated && !_profile.MayBeUnallocated)
        {
            throw Failure($"block status at {offset} answered {status}: a protocol driver decides all of its content (Allocated)");
        }

        if (!status.IsData && !status.IsZero)
        {
            throw Failure($"block status at {offset} answered {status}: neither Data nor Zero");
        }

        if (_profile.HostOffsetIsOffset && (!status.HasHostOffset || status.HostOffset != offset))
        {
            throw Failure($"block status at {offset} answered {status}: expected OffsetValid at host offset {offset}");
        }

        if (status.IsZero && !_model.IsZero(offset, status.Length))
        {
            var first = offset + _model.Read(offset, status.Length).IndexOfAnyExcept((byte)0);
            throw Failure($"block status at {offset} answered {status}, but byte {first} is 0x{_model.Bytes[first]:x2} in the model");
        }

        if (_neverWritten is not null && _neverWritten.AsSpan((int)offset, (int)status.Length).Contains(true) && (!status.IsData || status.IsZero))
        {
            throw Failure($"block status at {offset} answered {status}, but the run holds never-written bytes (0x{_profile.InitialByte:x2}), which are data");
        }
    }

    /// <summary>Reads the whole device and walks its block status from start to end.</summary>
    public async Task CheckAllAsync()
    {
        var size = _profile.Size;
        var buffer = Buffer((int)size, out var kind);
        Record($"full read ({kind})");
        await _disk.ReadAsync(0, buffer);
        Compare(0, buffer.Span, "full read");

        // Walk the status: runs must tile the device exactly; count how much of each granule is reported Zero.
        var granule = _profile.Granularity;
        var zeroBytes = new long[_mustReportZero.Length];
        var runs = 0;
        long offset = 0;
        while (offset < size)
        {
            var status = await _disk.GetBlockStatusAsync(offset, size - offset);
            runs++;
            if (status.Length <= 0 || status.Length > size - offset)
            {
                throw Failure($"block status walk: at {offset} the answer {status} does not fit in the {size - offset} bytes left");
            }

            CheckRun(offset, status);
            if (status.IsZero)
            {
                for (var g = offset / granule; g * granule < offset + status.Length; g++)
                {
                    var start = Math.Max(g * granule, offset);
                    var end = Math.Min(Math.Min((g + 1) * granule, size), offset + status.Length);
                    zeroBytes[g] += end - start;
                }
            }

            offset += status.Length;
        }

        if (offset != size)
        {
            throw Failure($"block status walk ended at {offset}, not at the device end {size}");
        }

        for (var g = 0; g < _mustReportZero.Length; g++)
        {
            var granuleLength = Math.Min(granule, size - g * granule);
            if (_mustReportZero[g] && zeroBytes[g] != granuleLength)
            {
                throw Failure($"block {g} ({g * granule}+{granuleLength}) was freed whole but only {zeroBytes[g]} bytes of it are reported Zero ({runs} runs)");
            }
        }
    }
}
