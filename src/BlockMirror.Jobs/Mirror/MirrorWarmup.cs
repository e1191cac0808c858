using System.Text.Json;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// Runs one small mirror from start to pivot on a private graph of memory nodes, so that the code of a
/// switch-over is compiled before a real one needs it. Without it the first pivot of a daemon's life
/// waits for the JIT (measured: 25 ms, against 1.7 ms for the second), and the pivot pause is the one
/// moment a VM's writes are held.
/// </summary>
public static class MirrorWarmup
{
    public static async Task RunAsync(CancellationToken cancellationToken = default)
    {
        const long Size = 1 << 20;
        var graph = new BlockGraph();
        await using var _ = graph.ConfigureAwait(false);
        var source = await OpenMemoryAsync(graph, "warmup-source", Size, cancellationToken).ConfigureAwait(false);
        var target = await OpenMemoryAsync(graph, "warmup-target", Size, cancellationToken).ConfigureAwait(false);
        var user = graph.AttachRoot(source, new RootParent("warmup"));
        await user.WriteAsync(0, new byte[64 * 1024], cancellationToken: cancellationToken).ConfigureAwait(false);
        var manager = new JobManager();
        var job = await MirrorJob.StartAsync(manager, graph, source, target, new MirrorOptions { JobId = "warmup" }, cancellationToken).ConfigureAwait(false);
        while (job.Status != JobStatus.Ready && !job.Finished.IsCompleted)
        {
            await Task.Delay(1, cancellationToken).ConfigureAwait(false);
        }

        await user.WriteAsync(Size / 2, new byte[4096], cancellationToken: cancellationToken).ConfigureAwait(false);
        if (!job.Finished.IsCompleted)
        {
            job.Complete();
        }

        await job.Finished.ConfigureAwait(false);
        await user.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    static async ValueTask<BlockNode> OpenMemoryAsync(BlockGraph graph, string name, long size, CancellationToken cancellationToken)
    {
        using var options = JsonDocument.Parse($$"""{"driver": "memory", "node-name": "{{name}}", "size": {{size}}}""");
        return await DriverRegistry.OpenAsync(graph, new OptionReader(options.RootElement), new OpenRules { InternalDrivers = true }, cancellationToken).ConfigureAwait(false);
    }
}
