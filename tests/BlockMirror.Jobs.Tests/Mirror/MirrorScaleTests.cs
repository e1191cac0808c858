using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Null;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// Thin stays thin at any size (issue 20): a mirror of a huge sparse disk costs what its data costs. Counted,
/// never timed: the block-status calls on the source, the bytes written to the target, the job's length, the
/// target's allocation, the chunks of the dirty bitmap.
/// </summary>
public sealed class MirrorScaleTests : IDisposable
{
    const long Chunk = 64 * 1024;

    readonly TempDirectory _dir = new("bm-mirror-scale-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task A_1_TiB_sparse_raw_source_is_dirtied_by_extents_and_only_its_data_is_copied()
    {
        const long size = 1L << 40;
        var sourcePath = _dir.File("source.raw");
        var targetPath = _dir.File("target.raw");
        // Three extents of data (4 MiB in all) in 1 TiB of holes; the target is one hole, as a fresh sparse file.
        (long Offset, int Length)[] extents = [(7 * Chunk, 1 << 20), (300L << 30, 2 << 20), (size - (1 << 20), 1 << 20)];
        using (var handle = File.OpenHandle(sourcePath, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            RandomAccess.SetLength(handle, size);
            var random = new Random(20);
            foreach (var (offset, length) in extents)
            {
                var data = new byte[length];
                random.NextBytes(data);
                RandomAccess.Write(handle, data, offset);
            }
        }

        using (var handle = File.OpenHandle(targetPath, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            RandomAccess.SetLength(handle, size);
        }

        var dataBytes = extents.Sum(e => (long)e.Length);
        await using var graph = new BlockGraph();
        var file = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(sourcePath, "raw", NodeName: "src-raw"));
        var source = await graph.CreateNodeAsync("src", false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new BlockStatusCountingFilter(node.AttachChild(ChildNames.File, file))));
        var target = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(targetPath, "raw", NodeName: "dst"));
        var counter = (BlockStatusCountingFilter)source.Driver;

        var manager = new JobManager();
        var job = await MirrorJob.StartAsync(manager, graph, source, target, new MirrorOptions { JobId = "j" });
        await MirrorTestRunner.WaitReadyAsync(manager, job);

        // One block-status call per extent to dirty (7 here: holes and data alternate), and a few per claimed
        // run to choose how to copy it; a walk per chunk would make 16 Mi calls.
        Assert.InRange(counter.Calls, extents.Length, 4 * ((2 * extents.Length) + 1));
        // QEMU's default granularity for a 1 TiB disk (under the 4 TiB where ours turns coarser).
        Assert.Equal(Chunk, job.Granularity);
        // len counts the data only (QEMU's offset/len are dirty bytes), and all of it was copied.
        var info = job.GetInfo();
        Assert.Equal((dataBytes, dataBytes), (info.Len, info.Offset));
        Assert.Equal(dataBytes, target.Statistics.Bytes(BlockOperation.Write));
        Assert.Equal(0, target.Statistics.Operations(BlockOperation.WriteZeroes));
        // The target stays as thin as the data (plus what the file system rounds).
        Assert.InRange(FileStatus.AllocatedBytes(targetPath) ?? -1, dataBytes, dataBytes + (1 << 20));

        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        foreach (var (offset, length) in extents)
        {
            var expected = new byte[length];
            var copied = new byte[length];
            await file.ReadAsync(offset, expected);
            await target.ReadAsync(offset, copied);
            Assert.True(expected.AsSpan().SequenceEqual(copied), $"the extent at {offset} differs on the target");
        }
    }

    [Theory]
    [InlineData(1L << 30, 0, Chunk)]
    [InlineData(4L << 40, 0, Chunk)]
    [InlineData((4L << 40) + 1, 0, 2 * Chunk)]
    [InlineData(15L << 40, 0, 4 * Chunk)]
    [InlineData(16L << 40, 0, 4 * Chunk)]
    [InlineData(64L << 40, 0, 1L << 20)]
    [InlineData(1L << 50, 0, 1L << 20)]
    [InlineData(1L << 30, 4096, 4096)]
    [InlineData(256L << 30, 4096, 4096)]
    [InlineData(1L << 40, 4096, 16384)]
    [InlineData(1L << 40, 512, 16384)]
    [InlineData(1L << 40, 2L << 20, Chunk)]
    public void The_default_granularity_is_qemus_up_to_64_Mi_chunks_then_coarser_up_to_1_MiB(long size, int cluster, long expected)
    {
        var granularity = MirrorJob.DefaultGranularity(cluster, size);

        Assert.Equal(expected, granularity);
        // The bitmap stays at 8 MiB (64 Mi chunks) until the granularity stops at 1 MiB (64 TiB).
        Assert.True((size + granularity - 1) / granularity <= MirrorJob.MaxDefaultChunks || granularity == MirrorJob.MaxDefaultGranularity);
    }

    [Fact]
    public async Task A_mirror_of_a_15_TiB_disk_without_a_granularity_tracks_256_KiB_chunks_and_one_given_is_kept()
    {
        const long size = 15L << 40;
        await using var graph = new BlockGraph();
        var manager = new JobManager();

        var job = await MirrorNullDisksAsync(graph, manager, "auto", size, granularity: 0);
        var given = await MirrorNullDisksAsync(graph, manager, "given", size, granularity: 2 * Chunk);

        Assert.Equal(4 * Chunk, job.Granularity);
        Assert.Equal(2 * Chunk, given.Granularity);
        // Nothing to copy: the source reads as zeroes and so does the target.
        Assert.Equal((0L, 0L), (job.GetInfo().Len, given.GetInfo().Len));
    }

    static async Task<MirrorJob> MirrorNullDisksAsync(BlockGraph graph, JobManager manager, string id, long size, long granularity)
    {
        var source = await NullDriver.OpenAsync(graph, $"{id}-src", new NullDriverOptions(size, ReadZeroes: true));
        var target = await NullDriver.OpenAsync(graph, $"{id}-dst", new NullDriverOptions(size, ReadZeroes: true));
        var job = await MirrorJob.StartAsync(manager, graph, source, target, new MirrorOptions { JobId = id, Granularity = granularity });
        await MirrorTestRunner.CompleteWhenReadyAsync(manager, job);
        return job;
    }

    /// <summary>Counts the block-status calls that pass through it.</summary>
    sealed class BlockStatusCountingFilter(NodeEdge child) : FilterDriver(child)
    {
        int _calls;

        public int Calls => Volatile.Read(ref _calls);

        public override string DriverName => "test-block-status-counting";

        public override ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _calls);
            return base.GetBlockStatusAsync(offset, length, cancellationToken);
        }
    }
}
