using BlockMirror.Block.Drivers.File;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The file driver's I/O threads: every call completes once with its own result, also when more calls are
/// queued than there are threads; errors and cancellation reach the caller and leave the threads usable.
/// </summary>
public sealed class FileIoThreadsTests : IDisposable
{
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task More_calls_than_threads_all_complete_with_their_own_data()
    {
        const int Calls = FileIoThreads.MaxThreads * 4;
        const int Block = 4096;
        var path = _dir.File("many.raw");
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        var io = FileIoThreads.Shared;

        await Task.WhenAll(Enumerable.Range(0, Calls).Select(i =>
            io.WriteAsync(handle, Enumerable.Repeat((byte)i, Block).ToArray(), (long)i * Block, CancellationToken.None).AsTask()));
        var buffers = Enumerable.Range(0, Calls).Select(_ => new byte[Block]).ToArray();
        var counts = await Task.WhenAll(Enumerable.Range(0, Calls).Select(i =>
            io.ReadAsync(handle, buffers[i], (long)i * Block, CancellationToken.None).AsTask()));

        Assert.All(counts, count => Assert.Equal(Block, count));
        for (var i = 0; i < Calls; i++)
        {
            Assert.All(buffers[i], b => Assert.Equal((byte)i, b));
        }

        // Scatter/gather, reading back across the blocks written above.
        var halves = new[] { new byte[Block / 2], new byte[Block], new byte[Block / 2] };
        Assert.Equal(2L * Block, await io.ReadAsync(handle, halves.Select(h => (Memory<byte>)h).ToArray(), Block / 2, CancellationToken.None));
        Assert.All(halves[0], b => Assert.Equal((byte)0, b));
        Assert.All(halves[1], b => Assert.Equal((byte)1, b));
        Assert.All(halves[2], b => Assert.Equal((byte)2, b));
    }

    [Fact]
    public async Task A_call_cancelled_before_it_runs_fails_and_changes_nothing()
    {
        var path = _dir.File("cancel.raw");
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            await FileIoThreads.Shared.WriteAsync(handle, new byte[512], 0, cancelled.Token));

        Assert.Equal(0, RandomAccess.GetLength(handle));
    }

    [Fact]
    public async Task An_error_reaches_the_caller_and_the_threads_go_on()
    {
        var path = _dir.File("readonly.raw");
        await File.WriteAllBytesAsync(path, new byte[4096]);
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read);

        for (var i = 0; i < 3; i++)
        {
            var error = await Record.ExceptionAsync(async () =>
                await FileIoThreads.Shared.WriteAsync(handle, new byte[512], 0, CancellationToken.None));
            Assert.True(error is IOException or UnauthorizedAccessException, $"got {error}");

            var buffer = new byte[4096];
            Assert.Equal(4096, await FileIoThreads.Shared.ReadAsync(handle, buffer, 0, CancellationToken.None));
        }
    }

    [Fact]
    public async Task The_caller_continues_on_the_io_thread_that_made_the_call()
    {
        var path = _dir.File("thread.raw");
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);

        // What callers count on for speed (an NBD reply is sent from there): no hop back to the pool. A
        // call that finished before the await looked at it continues on the caller's thread. One race
        // remains: a call that finishes after the await looked but before it registered its continuation
        // is resumed from the thread pool (ManualResetValueTaskSourceCore queues it). That costs a hop,
        // not correctness, and is rare: most resumptions must still stay off the pool.
        var stayed = 0;
        var places = new List<string>();
        await Task.Run(async () =>
        {
            for (var i = 0; i < 40; i++)
            {
                var caller = Environment.CurrentManagedThreadId;
                await FileIoThreads.Shared.WriteAsync(handle, new byte[4096], 0, CancellationToken.None).ConfigureAwait(false);
                if (Thread.CurrentThread.Name == "BlockMirror I/O" || Environment.CurrentManagedThreadId == caller)
                {
                    stayed++;
                }
                else
                {
                    places.Add(Thread.CurrentThread.Name ?? "a pool thread");
                }
            }
        });
        Assert.True(stayed >= 30, $"only {stayed} of 40 continued on the I/O thread or the caller's; the others on {string.Join(", ", places)}");
    }
}
