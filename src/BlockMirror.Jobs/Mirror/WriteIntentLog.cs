using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// A mirror's write-intent log (Linux md's write-intent bitmap is the model): one bit per coarse region of the
/// source, kept in a side file, set on disk for every region where source and target may differ. A region is
/// marked, and the mark made durable, before the first guest write into it goes to the source; it is cleared
/// lazily, once it has been copied, stayed clean and both source and target have been flushed. After a crash (SIGKILL, power
/// loss) the set bits are exactly what a resumed job must copy; everything else is equal on both sides.
/// </summary>
/// <remarks>
/// <para><b>Cost.</b> Only the first write into a clean region waits for a log write and fdatasync; writes that
/// arrive while one is under way share the next one (group commit). A marked region costs a write nothing but
/// two interlocked adds. Regions (<see cref="RegionSizeFor"/>) are 64 MiB from a 4 GiB disk up, as mdadm's
/// default bitmap chunk: few enough that a random writer re-marks them all within a moment and then pays no
/// flush at all, at the price of re-copying up to one region per region written since the last clear.</para>
/// <para><b>Invariant.</b> A bit set in <see cref="_marked"/> is set on disk. Marks are published only after
/// their write is durable; a clear takes the bit out of memory first and only then is written; both, and the
/// snapshot a write takes, happen under <see cref="_lock"/>, so no write carries a cleared bit that memory has
/// set again. Lock order: this log, then the dirty bitmap's and the engine's locks (see <see cref="ClearIdle"/>).</para>
/// <para><b>File</b> (ours, big-endian): a 4 KiB header, then one bit per region, region 0 in the lowest bit of
/// byte 0.</para>
/// <code>
///   0  u64 magic "BMWIL\0\0\x01"       24 u64 region count
///   8  u64 source length (bytes)        32 u16 target name length, then the name (UTF-8)
///  16  u64 region size (bytes)
/// </code>
/// </remarks>
sealed class WriteIntentLog : IDisposable
{
    const ulong Magic = 0x424D57494C000001;
    const int HeaderSize = 4096;
    const int Page = 4096;
    const int MaxTargetName = HeaderSize - 64;

    /// <summary>The largest region (mdadm's default bitmap chunk).</summary>
    public const long MaxRegionSize = 64L << 20;

    /// <summary>A disk is cut into at least this many regions while they are under <see cref="MaxRegionSize"/>.</summary>
    public const long MinRegions = 64;

    readonly string _path;
    readonly SafeFileHandle _file;
    readonly int _shift;
    readonly int _regions;
    readonly ulong[] _marked;
    readonly ulong[] _pending;
    readonly byte[] _onDisk;
    readonly int[] _active;
    readonly int[] _epoch;

    // Clearing (the copy loop only): a region that was idle at the previous pass, with this epoch.
    readonly bool[] _idle;
    readonly int[] _idleEpoch;

    readonly Lock _lock = new();
    TaskCompletionSource? _nextWrite;
    bool _writing;
    volatile bool _abandoned;

    WriteIntentLog(string path, SafeFileHandle file, long regionSize, int regions, byte[] onDisk)
    {
        _path = path;
        _file = file;
        RegionSize = regionSize;
        _shift = System.Numerics.BitOperations.Log2((ulong)regionSize);
        _regions = regions;
        _onDisk = onDisk;
        _marked = new ulong[(regions + 63) / 64];
        _pending = new ulong[_marked.Length];
        for (var r = 0; r < regions; r++)
        {
            if ((onDisk[r >> 3] & (1 << (r & 7))) != 0)
            {
                _marked[r >> 6] |= 1UL << (r & 63);
            }
        }

        _active = new int[regions];
        _epoch = new int[regions];
        _idle = new bool[regions];
        _idleEpoch = new int[regions];
    }

    public string Path => _path;

    public long RegionSize { get; }

    /// <summary>A write to the log failed: the log was given up (and its file removed), the job goes on without it.</summary>
    public bool Abandoned => _abandoned;

    /// <summary>The side file of a mirror from <paramref name="source"/>: next to the source's image file, or null when it has none.</summary>
    public static string? PathFor(BlockNode source)
    {
        var name = BlockChain.SkipFilters(source).Driver.FileName;
        return name is not null && ImageFiles.LocalFile(name) is { } file && File.Exists(file) ? System.IO.Path.GetFullPath(file) + ".blockmirror-wil" : null;
    }

    /// <summary>
    /// Bytes per region for a disk of <paramref name="length"/>: at least <see cref="MinRegions"/> regions up to
    /// <see cref="MaxRegionSize"/> (so a small disk keeps a resume small too), never below the job's granularity.
    /// </summary>
    public static long RegionSizeFor(long length, long granularity)
    {
        var size = (long)System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)Math.Max(1, (length + MinRegions - 1) / MinRegions));
        return Math.Max(granularity, Math.Min(size, MaxRegionSize));
    }

    static string? TargetName(BlockNode target) => BlockChain.SkipFilters(target).Driver.FileName;

    /// <summary>
    /// Creates the log for a new job with the regions <paramref name="initial"/> marks (whole disk for a full copy),
    /// durable (file and directory entry) before it returns. Refused when a log is already there: a crashed job's,
    /// which only a resume may use or a user remove.
    /// </summary>
    public static WriteIntentLog Create(string path, BlockNode source, BlockNode target, long regionSize, Func<long, long, bool> initial)
    {
        RefuseExisting(path, source);

        var length = source.Length;
        var regions = checked((int)((length + regionSize - 1) / regionSize));
        var nameBytes = Encoding.UTF8.GetBytes(TargetName(target) ?? "");
        if (nameBytes.Length > MaxTargetName)
        {
            throw new JobException($"Cannot keep a write-intent log: the target's file name is longer than {MaxTargetName} bytes");
        }

        var bits = new byte[BitmapBytes(regions)];
        for (var r = 0; r < regions; r++)
        {
            if (initial(r * regionSize, Math.Min(regionSize, length - r * regionSize)))
            {
                bits[r >> 3] |= (byte)(1 << (r & 7));
            }
        }

        var header = new byte[HeaderSize];
        BinaryPrimitives.WriteUInt64BigEndian(header, Magic);
        BinaryPrimitives.WriteInt64BigEndian(header.AsSpan(8), length);
        BinaryPrimitives.WriteInt64BigEndian(header.AsSpan(16), regionSize);
        BinaryPrimitives.WriteInt64BigEndian(header.AsSpan(24), regions);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(32), (ushort)nameBytes.Length);
        nameBytes.CopyTo(header.AsSpan(34));

        SafeFileHandle file;
        try
        {
            // Shared for reading only (.NET takes a shared flock): a tool may look, another writer may not. A second
            // process resuming the same job meets the source image's own write lock first.
            file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new JobException($"Cannot create the write-intent log '{path}': {ex.Message}");
        }

        try
        {
            RandomAccess.Write(file, header, 0);
            RandomAccess.Write(file, bits, HeaderSize);
            RandomAccess.FlushToDisk(file);
            FlushDirectory(path);
        }
        catch (IOException ex)
        {
            file.Dispose();
            File.Delete(path);
            throw new JobException($"Cannot write the write-intent log '{path}': {ex.Message}");
        }

        return new WriteIntentLog(path, file, regionSize, regions, bits);
    }

    /// <summary>A crashed job's log is never overwritten by a new job: only a resume uses it, or the user removes it.</summary>
    public static void RefuseExisting(string path, BlockNode source)
    {
        if (File.Exists(path))
        {
            throw new JobException($"A write-intent log of an earlier mirror from '{source.Name}' is at '{path}': resume that mirror, or remove the file to start afresh");
        }
    }

    /// <summary>
    /// Opens a crashed job's log to resume it: it must be there and be one of a mirror from a source of this
    /// length onto this target.
    /// </summary>
    public static WriteIntentLog Open(string path, BlockNode source, BlockNode target)
    {
        if (!File.Exists(path))
        {
            throw new JobException($"Nothing to resume for '{source.Name}': no write-intent log at '{path}' (the mirror ended cleanly, or never ran with one)");
        }

        var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        try
        {
            var header = new byte[HeaderSize];
            if (RandomAccess.Read(file, header, 0) != HeaderSize || BinaryPrimitives.ReadUInt64BigEndian(header) != Magic)
            {
                throw new JobException($"'{path}' is not a write-intent log of this version");
            }

            var length = BinaryPrimitives.ReadInt64BigEndian(header.AsSpan(8));
            var regionSize = BinaryPrimitives.ReadInt64BigEndian(header.AsSpan(16));
            var regions = BinaryPrimitives.ReadInt64BigEndian(header.AsSpan(24));
            var nameLength = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(32));
            if (length != source.Length || regionSize <= 0 || !System.Numerics.BitOperations.IsPow2(regionSize) ||
                regions != (length + regionSize - 1) / regionSize || nameLength > MaxTargetName)
            {
                throw new JobException($"The write-intent log '{path}' is of a source of {length} bytes, not of '{source.Name}' ({source.Length} bytes)");
            }

            var name = Encoding.UTF8.GetString(header, 34, nameLength);
            if (name != (TargetName(target) ?? ""))
            {
                throw new JobException($"The write-intent log '{path}' is of a mirror onto '{name}', not onto '{TargetName(target) ?? target.Name}'");
            }

            var bits = new byte[BitmapBytes((int)regions)];
            if (RandomAccess.Read(file, bits, HeaderSize) != bits.Length)
            {
                throw new JobException($"The write-intent log '{path}' is truncated");
            }

            return new WriteIntentLog(path, file, regionSize, (int)regions, bits);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    static int BitmapBytes(int regions) => (regions + 7) / 8;

    // The new name must survive a power loss too. Some file systems refuse fsync on a directory; the file itself is durable.
    static void FlushDirectory(string path) =>
        Block.Interop.DirectorySync.Flush(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!);

    bool Marked(int region) => (Volatile.Read(ref _marked[region >> 6]) & (1UL << (region & 63))) != 0;

    /// <summary>Calls <paramref name="each"/> with the byte range of every marked region (for a resume's dirty set).</summary>
    public void ForEachMarked(Action<long, long> each)
    {
        for (var r = 0; r < _regions; r++)
        {
            if (Marked(r))
            {
                each((long)r << _shift, RegionSize);
            }
        }
    }

    /// <summary>Bytes the log marks now.</summary>
    public long MarkedBytes
    {
        get
        {
            long count = 0;
            for (var i = 0; i < _marked.Length; i++)
            {
                count += System.Numerics.BitOperations.PopCount(Volatile.Read(ref _marked[i]));
            }

            return count * RegionSize;
        }
    }

    (int First, int Last) Regions(long offset, long length) =>
        ((int)(offset >> _shift), (int)(Math.Max(offset, offset + length - 1) >> _shift));

    /// <summary>
    /// A guest request to [offset, offset + length) starts (before it reaches the source): counted against the
    /// regions' clearing, then marked. Completes at once when its regions are marked already. Pair with <see cref="EndWrite"/>.
    /// </summary>
    public ValueTask BeginWriteAsync(long offset, long length)
    {
        var (first, last) = Regions(offset, length);
        var marked = true;
        for (var r = first; r <= last && r < _regions; r++)
        {
            // Counted before the bit is read: a clear that reads the counters after this sees the write, one
            // that read them before took the bit out first, so this read finds it clear (see ClearIdle).
            Interlocked.Increment(ref _active[r]);
            Interlocked.Increment(ref _epoch[r]);
            marked &= Marked(r);
        }

        return marked || _abandoned ? ValueTask.CompletedTask : new ValueTask(MarkAsync(first, Math.Min(last, _regions - 1)));
    }

    /// <summary>The request started by <see cref="BeginWriteAsync"/> has ended (also when it failed).</summary>
    public void EndWrite(long offset, long length)
    {
        var (first, last) = Regions(offset, length);
        for (var r = first; r <= last && r < _regions; r++)
        {
            Interlocked.Decrement(ref _active[r]);
        }
    }

    Task MarkAsync(int first, int last)
    {
        lock (_lock)
        {
            var any = false;
            for (var r = first; r <= last; r++)
            {
                if (!Marked(r))
                {
                    _pending[r >> 6] |= 1UL << (r & 63);
                    any = true;
                }
            }

            return any && !_abandoned ? QueueWriteLocked() : Task.CompletedTask;
        }
    }

    /// <summary>Joins the next log write (starting the writer if none runs); completes once that write is durable.</summary>
    Task QueueWriteLocked()
    {
        _nextWrite ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var task = _nextWrite.Task;
        if (!_writing)
        {
            _writing = true;
            _ = Task.Run(WriteLoop);
        }

        return task;
    }

    /// <summary>
    /// One writer at a time: takes the waiters gathered so far, writes the pages of the bitmap that changed and
    /// fdatasyncs, then publishes the marks and releases the waiters; again while more have gathered meanwhile.
    /// </summary>
    void WriteLoop()
    {
        while (true)
        {
            TaskCompletionSource batch;
            ulong[] marks;
            byte[] image;
            lock (_lock)
            {
                if (_nextWrite is null || _abandoned)
                {
                    _nextWrite?.TrySetResult();
                    _nextWrite = null;
                    _writing = false;
                    return;
                }

                batch = _nextWrite;
                _nextWrite = null;
                marks = (ulong[])_pending.Clone();
                Array.Clear(_pending);
                image = new byte[_onDisk.Length];
                for (var r = 0; r < _regions; r++)
                {
                    if (Marked(r) || (marks[r >> 6] & (1UL << (r & 63))) != 0)
                    {
                        image[r >> 3] |= (byte)(1 << (r & 7));
                    }
                }
            }

            try
            {
                for (var page = 0; page < image.Length; page += Page)
                {
                    var count = Math.Min(Page, image.Length - page);
                    if (!image.AsSpan(page, count).SequenceEqual(_onDisk.AsSpan(page, count)))
                    {
                        RandomAccess.Write(_file, image.AsSpan(page, count), HeaderSize + page);
                        image.AsSpan(page, count).CopyTo(_onDisk.AsSpan(page));
                    }
                }

                RandomAccess.FlushToDisk(_file);
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException)
            {
                Abandon();
                batch.TrySetResult();
                continue;
            }

            lock (_lock)
            {
                for (var i = 0; i < marks.Length; i++)
                {
                    Interlocked.Or(ref _marked[i], marks[i]);
                }
            }

            batch.TrySetResult();
        }
    }

    /// <summary>
    /// One pass of the lazy clearing, made right after flushes of source and target succeeded: a region is cleared when
    /// it was idle at the previous pass (<paramref name="clean"/>: nothing dirty, nothing in flight; no guest
    /// request running) and nothing has started in it since. Whatever was copied into it happened before that
    /// pass, so the flush just made has made it durable. Regions idle now for the first time are noted for the
    /// next pass. Returns the log write to wait for, or null when nothing was cleared.
    /// </summary>
    public Task? ClearIdle(Func<long, long, bool> clean)
    {
        lock (_lock)
        {
            var cleared = false;
            for (var r = 0; r < _regions; r++)
            {
                if (!Marked(r))
                {
                    _idle[r] = false;
                    continue;
                }

                var epoch = Volatile.Read(ref _epoch[r]);
                var idle = Volatile.Read(ref _active[r]) == 0 && clean((long)r << _shift, RegionSize);
                if (idle && _idle[r] && _idleEpoch[r] == epoch)
                {
                    // Out of memory first, then the counters once more: a request counted before this read
                    // keeps the region (the bit goes back before any log write can see it gone).
                    Interlocked.And(ref _marked[r >> 6], ~(1UL << (r & 63)));
                    if (Volatile.Read(ref _epoch[r]) != epoch || Volatile.Read(ref _active[r]) != 0)
                    {
                        Interlocked.Or(ref _marked[r >> 6], 1UL << (r & 63));
                    }
                    else
                    {
                        cleared = true;
                    }

                    _idle[r] = false;
                    continue;
                }

                _idle[r] = idle;
                _idleEpoch[r] = epoch;
            }

            return cleared && !_abandoned ? QueueWriteLocked() : null;
        }
    }

    /// <summary>
    /// The first half of a quick clear: the marked regions that no guest request has touched since the log was made
    /// or reopened (what the bulk copy works through) and that are settled now (<paramref name="clean"/>). What was
    /// copied into them has completed, so once flushes of source and target have followed this look,
    /// <see cref="ClearUntouched"/> may clear them at once. The second look of <see cref="ClearIdle"/> is there to
    /// keep a region a guest writes from being cleared and marked again over and over; a region no guest has
    /// written needs no such wait, and clearing it soon is what keeps a resume after a crash in the bulk copy from
    /// copying again what was already copied.
    /// </summary>
    public List<int>? SettledUntouched(Func<long, long, bool> clean)
    {
        lock (_lock)
        {
            List<int>? settled = null;
            for (var r = 0; r < _regions; r++)
            {
                if (Marked(r) && Volatile.Read(ref _epoch[r]) == 0 && Volatile.Read(ref _active[r]) == 0 && clean((long)r << _shift, RegionSize))
                {
                    (settled ??= []).Add(r);
                }
            }

            return settled;
        }
    }

    /// <summary>
    /// The second half of a quick clear, after flushes of source and target that followed <see cref="SettledUntouched"/>:
    /// clears those regions still untouched by any guest request. Returns the log write to wait for, or null when
    /// nothing was cleared.
    /// </summary>
    public Task? ClearUntouched(List<int> settled)
    {
        lock (_lock)
        {
            var cleared = false;
            foreach (var r in settled)
            {
                if (!Marked(r) || Volatile.Read(ref _epoch[r]) != 0 || Volatile.Read(ref _active[r]) != 0)
                {
                    continue;
                }

                // As in ClearIdle: out of memory first, then the counters once more.
                Interlocked.And(ref _marked[r >> 6], ~(1UL << (r & 63)));
                if (Volatile.Read(ref _epoch[r]) != 0 || Volatile.Read(ref _active[r]) != 0)
                {
                    Interlocked.Or(ref _marked[r >> 6], 1UL << (r & 63));
                }
                else
                {
                    cleared = true;
                    _idle[r] = false;
                }
            }

            return cleared && !_abandoned ? QueueWriteLocked() : null;
        }
    }

    /// <summary>Whether some marked region waits for a second idle look (a pass with a flush is worth making).</summary>
    public bool HasIdleCandidates
    {
        get
        {
            lock (_lock)
            {
                return Array.IndexOf(_idle, true) >= 0;
            }
        }
    }

    void Abandon()
    {
        lock (_lock)
        {
            if (_abandoned)
            {
                return;
            }

            // Nothing waits for the log any more; its file would now understate what differs, so it goes.
            _abandoned = true;
            Array.Fill(_marked, ulong.MaxValue);
        }

        Remove();
    }

    /// <summary>The job ended (it no longer tracks writes): the log goes, as md's does when an array is clean.</summary>
    public void Remove()
    {
        _abandoned = true;
        _file.Dispose();
        try
        {
            File.Delete(_path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Left behind: a resume compares it against the nodes it is given; nothing else reads it.
        }
    }

    public void Dispose() => _file.Dispose();
}
