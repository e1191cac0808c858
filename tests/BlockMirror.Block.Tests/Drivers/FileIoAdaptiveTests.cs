using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.File.IoUring;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The default engine (<see cref="FileIoAdaptive"/>): a lone call goes to an I/O thread, a call made while
/// another is in flight goes to the ring, and a mix of both under load reads back every byte written.
/// Each test has a ring and threads of its own, so calls of other tests never make an engine look busy.
/// </summary>
public sealed class FileIoAdaptiveTests : IDisposable
{
    const int Block = 4096;

    readonly TempDirectory _dir = new();
    readonly FileIoUring? _ring = FileIoUring.TryCreate(64, out _);
    readonly FileIoThreads _threads = new();

    public void Dispose()
    {
        _ring?.Dispose();
        _dir.Dispose();
    }

    FileIoAdaptive Adaptive()
    {
        Skip.If(_ring is null, "io_uring_setup fails on this kernel");
        return new FileIoAdaptive(_ring!, _threads);
    }

    SafeFileHandle Create(string name) => File.OpenHandle(_dir.File(name), FileMode.OpenOrCreate, FileAccess.ReadWrite);

    [SkippableFact]
    public async Task A_lone_call_goes_to_a_thread_and_one_made_while_a_call_is_in_flight_to_the_ring()
    {
        var adaptive = Adaptive();
        using var handle = Create("pick.raw");
        Assert.Same(_threads, adaptive.Pick());

        // A call held on an I/O thread: the next one must not wait for a thread, it goes to the ring.
        using var gate = new ManualResetEventSlim();
        var held = _threads.RunAsync(handle, _ => { gate.Wait(); return 0; }, CancellationToken.None);
        Assert.True(_threads.Busy);
        Assert.Same(_ring, adaptive.Pick());
        var data = Enumerable.Repeat((byte)0x5A, Block).ToArray();
        await adaptive.WriteAsync(handle, data, 0, CancellationToken.None);

        gate.Set();
        Assert.Equal(0, await held);
        Assert.False(_threads.Busy);
        Assert.False(_ring!.Busy);
        Assert.Same(_threads, adaptive.Pick());

        var back = new byte[Block];
        Assert.Equal(Block, await adaptive.ReadAsync(handle, back, 0, CancellationToken.None));
        Assert.Equal(data, back);
    }

    [SkippableFact]
    public async Task A_write_flagged_background_goes_to_the_threads_even_while_calls_are_in_flight()
    {
        // The process's own engines, as a node without aio gets them.
        Skip.If(FileIoUring.TryGetShared(out _) is null, "io_uring_setup fails on this kernel");
        var path = _dir.File("node.raw");
        FileDriver.CreateFile(path, 1 << 20);
        await using var graph = new BlockGraph();
        var node = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Direct: true));
        var driver = (FileDriver)node.Driver;
        var adaptive = Assert.IsType<FileIoAdaptive>(driver.WriteEngine(RequestFlags.None));
        Assert.Same(FileIoThreads.Shared, adaptive.Background);

        // Under load the adaptive engine would pick the ring; a background write still takes the threads.
        using var handle = Create("busy.raw");
        using var gate = new ManualResetEventSlim();
        var held = FileIoThreads.Shared.RunAsync(handle, _ => { gate.Wait(); return 0; }, CancellationToken.None);
        try
        {
            Assert.IsType<FileIoUring>(adaptive.Pick());
            Assert.Same(FileIoThreads.Shared, driver.WriteEngine(RequestFlags.Background | RequestFlags.Fua));

            // Every write path takes the flag: one buffer, several, and a misaligned one through the bounce buffer.
            using var data = new AlignedMemory(2 * Block, AlignedMemory.DirectAlignment);
            data.Memory.Span.Fill(0x3C);
            var block = data.Memory[..Block];
            await driver.WriteAsync(0, block, RequestFlags.Background, CancellationToken.None);
            await driver.WriteVectorAsync(Block, [block, block], RequestFlags.Background, CancellationToken.None);
            await driver.WriteAsync(3 * Block, data.Memory[1..(Block + 1)], RequestFlags.Background, CancellationToken.None);
        }
        finally
        {
            gate.Set();
            await held;
        }

        var back = new byte[4 * Block];
        await using (var file = new FileStream(path, FileMode.Open, FileAccess.Read))
        {
            await file.ReadExactlyAsync(back);
        }

        Assert.All(back, b => Assert.Equal(0x3C, b));
    }

    [SkippableFact]
    public async Task Calls_in_flight_together_use_both_engines_and_every_byte_reads_back()
    {
        var adaptive = Adaptive();
        using var handle = Create("mixed.raw");
        const int Rounds = 50;
        const int Depth = 16;
        var places = new System.Collections.Concurrent.ConcurrentBag<string?>();
        for (var round = 0; round < Rounds; round++)
        {
            // Each round starts from idle engines and off their threads, so its first call takes a thread. (The
            // last round's continuation may run on the ring's thread, where every call goes to the ring.)
            await WaitIdleAsync();
            await Task.WhenAll(Enumerable.Range(0, Depth).Select(async i =>
            {
                var offset = (long)(round * Depth + i) * Block;
                await adaptive.WriteAsync(handle, Pattern(round, i), offset, CancellationToken.None).ConfigureAwait(false);
                places.Add(Thread.CurrentThread.Name);
                if (i % 4 == 0)
                {
                    // A flush and a vectored write in the mix, as a mirror's target sees them.
                    Assert.Equal(0, await adaptive.DataSyncAsync(handle, CancellationToken.None).ConfigureAwait(false));
                    await adaptive.WriteAsync(handle, [Pattern(round, i).AsMemory(0, Block / 2), Pattern(round, i).AsMemory(Block / 2)], offset, CancellationToken.None).ConfigureAwait(false);
                }
            }));
        }

        Assert.False(_threads.Busy);
        Assert.False(_ring!.Busy);
        var back = new byte[Block];
        for (var round = 0; round < Rounds; round++)
        {
            for (var i = 0; i < Depth; i++)
            {
                Assert.Equal(Block, await adaptive.ReadAsync(handle, back, (long)(round * Depth + i) * Block, CancellationToken.None));
                Assert.Equal(Pattern(round, i), back);
            }
        }

        // Continuations run where the call completed: both engines must have served calls.
        Assert.Contains("BlockMirror I/O", places);
        Assert.Contains("BlockMirror io_uring", places);
    }

    [SkippableFact]
    public void A_node_without_aio_gets_the_adaptive_engine_and_the_threads_without_a_word_where_there_is_no_ring()
    {
        Skip.If(_ring is null, "io_uring_setup fails on this kernel");
        var log = new LogCollector();
        var logger = log.CreateLogger("test");
        Assert.IsType<FileIoAdaptive>(FileIoEngines.Select(null, logger, "disk", () => (_ring, null)));
        Assert.Same(FileIoThreads.Shared, FileIoEngines.Select(null, logger, "disk", () => (null, "io_uring_setup failed: Operation not permitted")));

        // Nobody asked for io_uring, so nothing is reported as falling back.
        Assert.Empty(log.Records);
    }

    async Task WaitIdleAsync()
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        do
        {
            await Task.Delay(1, deadline.Token).ConfigureAwait(false);
        }
        while (_threads.Busy || _ring!.Busy);
    }

    static byte[] Pattern(int round, int i)
    {
        var data = new byte[Block];
        new Random(round * 1000 + i).NextBytes(data);
        return data;
    }
}
