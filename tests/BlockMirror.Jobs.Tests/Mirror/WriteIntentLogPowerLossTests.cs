using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The write-intent log's promise across a power loss, with the job around it: a region the log on disk calls
/// clean holds the same bytes on the source's and the target's disks, cache or no cache. Both sides sit behind a
/// <see cref="VolatileCacheFilter"/>, so the files below hold at every moment what a power loss would leave.
/// </summary>
public sealed class WriteIntentLogPowerLossTests : IAsyncLifetime
{
    const long Size = 1 << 20;
    const long Region = 64 * 1024;

    readonly TempDirectory _dir = new("blockmirror-wil-power-");
    readonly BlockGraph _graph = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _graph.DisposeAsync();
        _dir.Dispose();
    }

    [Fact]
    public async Task A_region_leaves_the_log_only_once_both_disks_hold_the_same_bytes_there()
    {
        var data = new byte[Size];
        new Random(7).NextBytes(data);
        await File.WriteAllBytesAsync(_dir.File("source.raw"), data);
        await File.WriteAllBytesAsync(_dir.File("target.raw"), new byte[Size]);
        var sourceDisk = await ImageFiles.OpenAsync(_graph, new ImageOpenOptions(_dir.File("source.raw"), "raw"));
        var targetDisk = await ImageFiles.OpenAsync(_graph, new ImageOpenOptions(_dir.File("target.raw"), "raw"));
        var source = await VolatileCacheFilter.OpenAsync(_graph, "src", sourceDisk);
        var target = await VolatileCacheFilter.OpenAsync(_graph, "dst", targetDisk);
        var vm = _graph.AttachRoot(source, new RootParent("vm"), "vm", BlockPermissions.ConsistentRead | BlockPermissions.Write);

        var manager = new JobManager();
        var ready = new TaskCompletionSource();
        using var _ = manager.Events.Subscribe(e => { if (e is BlockJobReadyEvent) ready.TrySetResult(); });
        var job = await MirrorJob.StartAsync(manager, _graph, source, target, new MirrorOptions
        {
            JobId = "wil",
            Granularity = Region,
            WriteIntentLog = true,
            WriteIntentLogClearInterval = TimeSpan.FromMilliseconds(20),
            WriteIntentLogQuickClearInterval = TimeSpan.FromMilliseconds(10),
        });
        var log = WriteIntentLog.PathFor(source)!;
        await ready.Task.WaitAsync(TimeSpan.FromSeconds(20));
        await WaitUntilClearAsync(log, source, target);

        // A guest write the guest has not flushed: the job copies it and may clear its region again.
        var write = new byte[4096];
        new Random(8).NextBytes(write);
        await vm.WriteAsync(5 * Region + 8192, write);
        await WaitUntilClearAsync(log, source, target);

        // The power goes now: what each file holds is what each disk would keep.
        var onSource = await File.ReadAllBytesAsync(_dir.File("source.raw"));
        var onTarget = await File.ReadAllBytesAsync(_dir.File("target.raw"));
        var differ = onSource.AsSpan().CommonPrefixLength(onTarget);
        Assert.True(differ == Size, $"the log on disk marks nothing, but the source's and the target's disks differ from byte {differ} (region {differ / Region})");

        await job.CancelAsync(force: true);
        await job.Finished.WaitAsync(TimeSpan.FromSeconds(20));
    }

    /// <summary>Waits until the log on disk marks no region (what a resume after a crash now would copy: nothing).</summary>
    static async Task WaitUntilClearAsync(string path, BlockNode source, BlockNode target)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            using (var reopened = WriteIntentLog.Open(path, source, target))
            {
                if (reopened.MarkedBytes == 0)
                {
                    return;
                }
            }

            Assert.True(DateTime.UtcNow < deadline, "the log still marks regions after 20 s");
            await Task.Delay(10);
        }
    }
}
