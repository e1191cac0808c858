using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.File.IoUring;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The io_uring engine on its own ring: more calls than the ring holds, O_DIRECT, vectors, fallocate,
/// fdatasync, EOF, errors and cancellation answered as the I/O threads answer them, continuations on the
/// completion thread; and the fallback to the threads when io_uring_setup fails.
/// </summary>
public sealed class FileIoUringTests : IDisposable
{
    const int Block = 4096;

    readonly TempDirectory _dir = new();
    // A small ring, so that the tests below overflow it; null where the kernel has no io_uring.
    readonly FileIoUring? _ownRing = FileIoUring.TryCreate(8, out _);

    public void Dispose()
    {
        _ownRing?.Dispose();
        _dir.Dispose();
    }

    FileIoUring Ring
    {
        get
        {
            Skip.If(_ownRing is null, "io_uring_setup fails on this kernel");
            return _ownRing!;
        }
    }

    /// <summary>Both engines, for tests that compare what they answer.</summary>
    IEnumerable<IFileIo> Engines => [FileIoThreads.Shared, Ring];

    SafeFileHandle Create(string name, FileAccess access = FileAccess.ReadWrite) =>
        File.OpenHandle(_dir.File(name), FileMode.OpenOrCreate, access);

    [SkippableFact]
    public async Task More_calls_than_the_ring_holds_all_complete_with_their_own_data()
    {
        const int Calls = 200;
        Assert.True(Ring.Entries < Calls);
        using var handle = Create("many.raw");

        await Task.WhenAll(Enumerable.Range(0, Calls).Select(i =>
            Ring.WriteAsync(handle, Enumerable.Repeat((byte)i, Block).ToArray(), (long)i * Block, CancellationToken.None).AsTask()));
        var buffers = Enumerable.Range(0, Calls).Select(_ => new byte[Block]).ToArray();
        var counts = await Task.WhenAll(Enumerable.Range(0, Calls).Select(i =>
            Ring.ReadAsync(handle, buffers[i], (long)i * Block, CancellationToken.None).AsTask()));

        Assert.All(counts, count => Assert.Equal(Block, count));
        for (var i = 0; i < Calls; i++)
        {
            Assert.All(buffers[i], b => Assert.Equal((byte)i, b));
        }

        // What the kernel wrote, read back without the engine.
        var check = new byte[Block];
        RandomAccess.Read(handle, check, 137L * Block);
        Assert.All(check, b => Assert.Equal((byte)137, b));
    }

    [SkippableFact]
    public async Task Direct_aligned_reads_and_writes_reach_the_file()
    {
        // On a disk file system: a tmpfs takes O_DIRECT and ignores it.
        using var disk = TempDirectory.OnDisk();
        var path = disk.File("direct.raw");
        FileDriver.CreateFile(path, 16 * Block);
        var fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CLOEXEC | LibC.O_DIRECT, 0);
        Skip.If(fd < 0, "the temp directory's file system refuses O_DIRECT");
        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        using var memory = new AlignedMemory(4 * Block, Block);
        for (var i = 0; i < memory.Length; i++)
        {
            memory.Memory.Span[i] = (byte)(i % 251);
        }

        await Ring.WriteAsync(handle, memory.Memory, 4 * Block, CancellationToken.None);
        memory.Memory.Span.Clear();
        Assert.Equal(4 * Block, await Ring.ReadAsync(handle, memory.Memory, 4 * Block, CancellationToken.None));
        for (var i = 0; i < memory.Length; i++)
        {
            Assert.Equal((byte)(i % 251), memory.Memory.Span[i]);
        }

        // O_DIRECT at an offset inside a sector (of data: a hole is read without the check) is refused, with the threads' exception.
        var errors = new List<Exception?>();
        foreach (var engine in Engines)
        {
            errors.Add(await Record.ExceptionAsync(async () => await engine.ReadAsync(handle, memory.Memory[..Block], 4 * Block + 1, CancellationToken.None)));
        }

        AssertSameError(errors, LibC.EINVAL);
    }

    [SkippableFact]
    public async Task Vectors_write_and_read_every_segment_in_order()
    {
        using var handle = Create("vectors.raw");
        ReadOnlyMemory<byte>[] segments = [Fill(100, 1), Fill(Block, 2), Fill(3000, 3)];
        await Ring.WriteAsync(handle, segments, 10, CancellationToken.None);

        var whole = new byte[10 + 100 + Block + 3000];
        RandomAccess.Read(handle, whole, 0);
        Assert.All(whole[..10], b => Assert.Equal(0, b));
        Assert.All(whole[10..110], b => Assert.Equal(1, b));
        Assert.All(whole[110..(110 + Block)], b => Assert.Equal(2, b));
        Assert.All(whole[(110 + Block)..], b => Assert.Equal(3, b));

        // Read back across the segments' borders, past the end of the file: one preadv's count.
        var parts = new[] { new byte[60], new byte[Block], new byte[8000] };
        var read = await Ring.ReadAsync(handle, [.. parts.Select(p => (Memory<byte>)p)], 60, CancellationToken.None);
        Assert.Equal(whole.Length - 60, read);
        Assert.Equal(whole[60..120], parts[0]);
        Assert.Equal(whole[120..(120 + Block)], parts[1]);
        Assert.Equal(whole[(120 + Block)..], parts[2][..(whole.Length - 120 - Block)]);
    }

    [SkippableFact]
    public async Task A_read_at_the_end_returns_what_the_file_has_then_nothing()
    {
        using var handle = Create("short.raw");
        RandomAccess.Write(handle, Fill(1000, 7).Span, 0);
        foreach (var engine in Engines)
        {
            var buffer = new byte[Block];
            Assert.Equal(1000, await engine.ReadAsync(handle, buffer, 0, CancellationToken.None));
            Assert.All(buffer[..1000], b => Assert.Equal(7, b));
            Assert.Equal(0, await engine.ReadAsync(handle, buffer, 1000, CancellationToken.None));
            Assert.Equal(0, await engine.ReadAsync(handle, buffer, 1 << 20, CancellationToken.None));
        }
    }

    [SkippableFact]
    public async Task Fallocate_punches_and_zeroes_and_fdatasync_succeeds()
    {
        await PunchHoleSupport.SkipUnlessAvailableAsync();
        using var handle = Create("fallocate.raw");
        RandomAccess.Write(handle, Fill(16 * Block, 0xAA).Span, 0);

        const int PunchHole = LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE;
        Assert.Equal(0, await Ring.FallocateAsync(handle, PunchHole, 4 * Block, 4 * Block, CancellationToken.None));
        Assert.Equal(4L * Block, LibC.LSeek(handle, 0, LibC.SEEK_HOLE));
        Assert.Equal(8L * Block, LibC.LSeek(handle, 4 * Block, LibC.SEEK_DATA));

        var zeroRange = await Ring.FallocateAsync(handle, LibC.FALLOC_FL_ZERO_RANGE | LibC.FALLOC_FL_KEEP_SIZE, 10 * Block, 100, CancellationToken.None);
        Assert.True(zeroRange is 0 or LibC.ENOTSUP, $"zero-range: errno {zeroRange}");
        var data = new byte[16 * Block];
        RandomAccess.Read(handle, data, 0);
        Assert.All(data[(4 * Block)..(8 * Block)], b => Assert.Equal(0, b));
        Assert.All(data[(10 * Block)..(10 * Block + 100)], b => Assert.Equal(zeroRange == 0 ? 0 : 0xAA, b));
        Assert.All(data[(10 * Block + 100)..], b => Assert.Equal(0xAA, b));
        Assert.Equal(16L * Block, RandomAccess.GetLength(handle));

        // An unknown mode is the errno as a value, from both engines.
        Assert.Equal(await FileIoThreads.Shared.FallocateAsync(handle, 0x4000, 0, Block, CancellationToken.None),
            await Ring.FallocateAsync(handle, 0x4000, 0, Block, CancellationToken.None));
        Assert.Equal(0, await Ring.DataSyncAsync(handle, CancellationToken.None));
    }

    [SkippableFact]
    public async Task Errors_are_the_ones_the_threads_raise()
    {
        // ENOSPC: /dev/full refuses every write with it.
        using (var full = File.OpenHandle("/dev/full", FileMode.Open, FileAccess.ReadWrite))
        {
            var errors = new List<Exception?>();
            foreach (var engine in Engines)
            {
                errors.Add(await Record.ExceptionAsync(async () => await engine.WriteAsync(full, new byte[Block], 0, CancellationToken.None)));
            }

            AssertSameError(errors, LibC.ENOSPC);
        }

        // EISDIR: a read of a directory's descriptor.
        var directoryFd = LibC.Open(_dir.Path, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
        using (var directory = new SafeFileHandle(directoryFd, ownsHandle: true))
        {
            var errors = new List<Exception?>();
            foreach (var engine in Engines)
            {
                errors.Add(await Record.ExceptionAsync(async () => await engine.ReadAsync(directory, new byte[Block], 0, CancellationToken.None)));
            }

            AssertSameError(errors, 21);
        }

        // EBADF (a write on a read-only descriptor): .NET's UnauthorizedAccessException, which the node reports as EIO.
        var path = _dir.File("readonly.raw");
        await File.WriteAllBytesAsync(path, new byte[Block]);
        using var readOnly = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        var ebadf = new List<Exception?>();
        foreach (var engine in Engines)
        {
            ebadf.Add(await Record.ExceptionAsync(async () => await engine.WriteAsync(readOnly, new byte[512], 0, CancellationToken.None)));
        }

        Assert.All(ebadf, e => Assert.IsType<UnauthorizedAccessException>(e));

        // fdatasync on a pipe: EINVAL as a value from both.
        var pipe = new System.IO.Pipes.AnonymousPipeServerStream();
        using var pipeHandle = new SafeFileHandle(pipe.SafePipeHandle.DangerousGetHandle(), ownsHandle: false);
        Assert.Equal(LibC.EINVAL, await Ring.DataSyncAsync(pipeHandle, CancellationToken.None));
        Assert.Equal(LibC.EINVAL, await FileIoThreads.Shared.DataSyncAsync(pipeHandle, CancellationToken.None));
        pipe.Dispose();

        // And the ring goes on.
        var buffer = new byte[Block];
        Assert.Equal(Block, await Ring.ReadAsync(readOnly, buffer, 0, CancellationToken.None));
    }

    [SkippableFact]
    public async Task A_node_with_aio_io_uring_sends_its_requests_to_the_ring()
    {
        Skip.If(FileIoUring.TryGetShared(out var failure) is null, failure);
        await using var graph = new BlockGraph();
        var path = _dir.File("node.raw");
        FileDriver.CreateFile(path, 16 * Block);
        var node = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Aio: "io_uring"));
        Assert.Equal("io_uring", ((FileDriver)node.Driver).Engine);
        await node.WriteAsync(0, Fill(Block, 5));
        await node.FlushAsync();
        var back = new byte[Block];
        await node.ReadAsync(0, back);
        Assert.All(back, b => Assert.Equal(5, b));
    }

    [SkippableFact]
    public async Task Cancelled_and_closed_fail_as_with_the_threads_and_change_nothing()
    {
        using var handle = Create("cancel.raw");
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await Ring.WriteAsync(handle, new byte[512], 0, cancelled.Token));
        Assert.Equal(0, RandomAccess.GetLength(handle));

        var closed = Create("closed.raw");
        closed.Dispose();
        foreach (var engine in Engines)
        {
            await Assert.ThrowsAsync<ObjectDisposedException>(async () => await engine.ReadAsync(closed, new byte[512], 0, CancellationToken.None));
        }
    }

    [SkippableFact]
    public async Task The_caller_continues_on_the_completion_thread()
    {
        const string RingThread = "BlockMirror io_uring";
        using var handle = Create("thread.raw");
        var places = new List<string?>();
        await Task.Run(async () =>
        {
            // From a pool thread: a call still in flight when awaited resumes its caller on the ring's thread. One
            // that completed first (the caller descheduled while the ring ran it, common on a loaded 2-core host)
            // continues on the pool thread instead, so calls are made until one resumes on the ring's thread.
            for (var i = 0; i < 2000 && Thread.CurrentThread.Name != RingThread; i++)
            {
                await Ring.WriteAsync(handle, new byte[Block], 0, CancellationToken.None).ConfigureAwait(false);
            }

            Assert.Equal(RingThread, Thread.CurrentThread.Name);

            // From the ring's thread every call is placed in the ring and entered with the next batch, which only
            // this thread submits: none completes before its await, and each caller resumes here.
            for (var i = 0; i < 20; i++)
            {
                await Ring.WriteAsync(handle, new byte[Block], 0, CancellationToken.None).ConfigureAwait(false);
                places.Add(Thread.CurrentThread.Name);
                await Ring.ReadAsync(handle, new byte[Block], 0, CancellationToken.None).ConfigureAwait(false);
                places.Add(Thread.CurrentThread.Name);
            }
        });

        Assert.Equal(40, places.Count);
        Assert.All(places, place => Assert.Equal(RingThread, place));
    }

    [Fact]
    public void A_failed_setup_falls_back_to_the_threads_with_one_warning()
    {
        var log = new LogCollector();
        var logger = log.CreateLogger("test");

        // A real refusal: io_uring_setup takes no ring of 0 entries (EINVAL).
        Assert.Null(FileIoUring.TryCreate(0, out var failure));
        Assert.Contains("io_uring_setup failed", failure);

        var engine = FileIoEngines.Select("io_uring", logger, "disk", () => (FileIoUring.TryCreate(0, out var f), f));
        Assert.Same(FileIoThreads.Shared, engine);
        var warning = Assert.Single(log.Records);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Equal("file_aio_fallback", warning.EventName);
        Assert.Contains("node 'disk'", warning.Message);
        Assert.Contains(failure!, warning.Message);

        // The same with the kernel's answer where io_uring is disabled; threads and native never ask for a ring.
        Assert.Same(FileIoThreads.Shared, FileIoEngines.Select("io_uring", logger, "other", () => (null, "io_uring_setup failed: Operation not permitted")));
        Assert.Same(FileIoThreads.Shared, FileIoEngines.Select("native", logger, "n", () => throw new InvalidOperationException("asked")));
        Assert.Same(FileIoThreads.Shared, FileIoEngines.Select("threads", logger, "t", () => throw new InvalidOperationException("asked")));
        Assert.Equal(2, log.Records.Count);
    }

    static void AssertSameError(List<Exception?> errors, int errno)
    {
        Assert.Equal(2, errors.Count);
        var (threads, ring) = (errors[0], errors[1]);
        Assert.True(threads is not null && ring is not null, $"threads: {threads?.Message ?? "no error"}; io_uring: {ring?.Message ?? "no error"}");
        Assert.NotNull(threads);
        Assert.NotNull(ring);
        Assert.Equal(threads.GetType(), ring.GetType());
        Assert.Equal(errno, threads.HResult);
        Assert.Equal(threads.HResult, ring.HResult);
        // .NET adds the path to the text when it knows one (File.OpenHandle); a node's descriptor has none.
        Assert.StartsWith(ring.Message, threads.Message, StringComparison.Ordinal);
    }

    static ReadOnlyMemory<byte> Fill(int length, byte value) => Enumerable.Repeat(value, length).ToArray();
}
