using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>Bugs found by the demo and the randomized tests, kept as named tests.</summary>
public sealed class MirrorRegressionTests : IDisposable
{
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>
    /// Found by `blockmirror demo`: a 64 KiB chunk whose first 4 KiB is a hole and which holds data further
    /// in was zeroed on the target, because the short zero run decided the method for the whole chunk.
    /// </summary>
    [Fact]
    public async Task A_chunk_that_starts_with_a_hole_and_holds_data_later_is_copied_not_zeroed()
    {
        const long size = 1 << 20;
        var sourcePath = _dir.File("source.raw");
        var targetPath = _dir.File("target.raw");
        ImageFiles.Create(sourcePath, "raw", size);
        ImageFiles.Create(targetPath, "raw", size);
        await using var graph = new BlockGraph();
        var source = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(sourcePath, "raw", NodeName: "src"));
        var target = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(targetPath, "raw", NodeName: "dst"));

        // Data at 4 KiB..8 KiB of the chunk at 64 KiB; the rest of the file is holes.
        var data = Enumerable.Repeat((byte)0x5c, 4096).ToArray();
        await source.WriteAsync(65536 + 4096, data);
        var status = await source.GetBlockStatusAsync(65536, 65536);
        Assert.True(status.IsZero && status.Length == 4096, $"the file system must report the 4 KiB hole first, got {status}");

        var manager = new JobManager();
        var job = await MirrorJob.StartAsync(manager, graph, source, target, new MirrorOptions { JobId = "j", Granularity = 65536 });
        await MirrorTestRunner.CompleteWhenReadyAsync(manager, job);

        var copied = new byte[4096];
        await target.ReadAsync(65536 + 4096, copied);
        Assert.Equal(data, copied);
    }

    /// <summary>
    /// Found by the bad-input tests: granularity 64 MiB (the largest allowed) was refused with "buf-size
    /// expects a value of at least the granularity (67108864 bytes), got 16777216": the default buffer,
    /// which the user never gave, was checked as if given. QEMU rounds the buffer up to the granularity.
    /// </summary>
    [Fact]
    public async Task The_largest_granularity_works_with_the_default_buffer_size()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(new MirrorOptions { JobId = "mirror0", Granularity = 64L << 20 });
        Assert.Equal(64L << 20, job.BufSize);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }
}
