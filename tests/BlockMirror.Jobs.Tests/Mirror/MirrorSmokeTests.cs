using System.Collections.Concurrent;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

public sealed class MirrorSmokeTests
{
    [Fact]
    public async Task Mirror_with_a_live_writer_pivots_and_loses_nothing()
    {
        const long size = 4 << 20;
        await using var graph = new BlockGraph();
        var source = await MemoryDriver.OpenAsync(graph, "src", new MemoryDriverOptions(size));
        var target = await MemoryDriver.OpenAsync(graph, "dst", new MemoryDriverOptions(size));
        var vm = graph.AttachRoot(source, new RootParent("vm"));
        var data = new byte[size];
        new Random(3).NextBytes(data.AsSpan(0, (int)(size / 2)));
        await vm.WriteAsync(0, data.AsMemory(0, (int)(size / 2)));

        var manager = new JobManager();
        var events = new ConcurrentQueue<JobEvent>();
        using var _ = manager.Events.Subscribe(events.Enqueue);
        var ready = new TaskCompletionSource();
        using var __ = manager.Events.Subscribe(e => { if (e is BlockJobReadyEvent) ready.TrySetResult(); });

        var job = await MirrorJob.StartAsync(manager, graph, source, target, new MirrorOptions { JobId = "job0", Granularity = 4096 });
        var rng = new Random(4);
        var stop = false;
        var writer = Task.Run(async () =>
        {
            while (!Volatile.Read(ref stop))
            {
                var offset = rng.Next(0, (int)(size / 512) - 8) * 512L;
                var buf = new byte[4096];
                rng.NextBytes(buf);
                await vm.WriteAsync(offset, buf);
                lock (data)
                {
                    buf.CopyTo(data, offset);
                }
            }
        });

        await ready.Task.WaitAsync(TimeSpan.FromSeconds(20));
        job.Complete();
        await job.Finished.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Same(target, vm.Node);
        Volatile.Write(ref stop, true);
        await writer;

        var onTarget = new byte[size];
        await target.ReadAsync(0, onTarget);
        Assert.Equal(-1, onTarget.AsSpan().CommonPrefixLength(data) == data.Length ? -1 : onTarget.AsSpan().CommonPrefixLength(data));
        Assert.Null(graph.FindNode(job.FilterNode.Name));
        var names = events.Select(e => e is JobStatusChangeEvent s ? s.Status.ToWireName() : e.Name).ToList();
        Assert.Equal(["created", "running", "ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"], names.Where(n => n != "BLOCK_JOB_ERROR"));
    }
}
