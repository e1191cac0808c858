using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// qcow2 chains on files in memory for the concurrency tests of sync=top and active commit: memory nodes
/// cannot have backing files. Images are filled in a graph of their own and closed before the test opens
/// them, the way a user's images come to a job.
/// </summary>
static class Qcow2Images
{
    public static readonly int[] ClusterSizes = [4096, 8192, 16384, 32768, 65536];

    /// <summary>
    /// Opens an image as file node, a <see cref="JitterFilter"/> and the qcow2 node above it: the jitter sits
    /// between the qcow2 driver and its file, so metadata updates of concurrent requests interleave
    /// differently from run to run.
    /// </summary>
    public static async Task<BlockNode> OpenAsync(BlockGraph graph, string path, string name, bool readOnly, Qcow2Options options,
        FileDiscardMode discard, int jitterSeed)
    {
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path, Discard: discard), readOnly);
        var jitter = await JitterFilter.OpenAsync(graph, null, file, jitterSeed);
        return await Qcow2Driver.OpenAsync(graph, name, jitter, options with { Discard = discard }, readOnly);
    }

    /// <summary>
    /// Writes random data (and a zeroed range) into the image at <paramref name="path"/>, through its
    /// backing chain, and applies the same to <paramref name="model"/>, the chain's content. Only
    /// <paramref name="length"/> bytes (the image's size) are touched.
    /// </summary>
    public static async Task FillAsync(string path, byte[] model, long length, Random random, int writes)
    {
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2"));
        for (var i = 0; i < writes; i++)
        {
            var offset = random.NextInt64(length);
            var count = (int)Math.Min(random.Next(1, 32768), length - offset);
            if (random.Next(5) == 0)
            {
                await node.WriteZeroesAsync(offset, count);
                model.AsSpan((int)offset, count).Clear();
            }
            else
            {
                random.NextBytes(model.AsSpan((int)offset, count));
                await node.WriteAsync(offset, model.AsMemory((int)offset, count));
            }
        }
    }

    /// <summary>Null when the image, opened alone with its chain from its header, reads <paramref name="model"/>.</summary>
    public static async Task<string?> CompareFileAsync(string path, byte[] model)
    {
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
        return await ConcurrencyHarness.CompareModelAsync(node, model);
    }

    /// <summary>qemu-img check on each image (closed): no corruption and no leaked cluster.</summary>
    public static async Task CheckAsync(params string[] paths)
    {
        foreach (var path in paths)
        {
            await using var graph = new BlockGraph();
            var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path), readOnly: true);
            var result = await Qcow2Check.CheckAsync(file, Qcow2RepairMode.None);
            ConcurrencyHarness.Require(result is { Corruptions: 0, Leaks: 0, CheckErrors: 0 },
                $"check of {Path.GetFileName(path)}: {result.Corruptions} corruption(s), {result.Leaks} leak(s), {result.CheckErrors} error(s): {string.Join("; ", result.Messages)}");
        }
    }

    /// <summary>
    /// What <paramref name="node"/> would read with <paramref name="backing"/> below it: its own clusters
    /// where it has them, the backing's elsewhere. For a target that names its backing in its header but
    /// has not opened it yet.
    /// </summary>
    public static async Task<byte[]> ReadAsIfBackedAsync(BlockNode node, BlockNode backing)
    {
        var bytes = new byte[node.Length];
        for (long offset = 0; offset < bytes.LongLength;)
        {
            var status = await node.GetBlockStatusAsync(offset, bytes.LongLength - offset);
            var run = bytes.AsMemory((int)offset, (int)status.Length);
            await (status.IsAllocated ? node : backing).ReadAsync(offset, run);
            offset += status.Length;
        }

        return bytes;
    }
}
