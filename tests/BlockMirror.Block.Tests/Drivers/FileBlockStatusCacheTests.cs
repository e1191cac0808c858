using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The file driver remembers the last data run lseek found (a dense file asked piece by piece was
/// quadratic on tmpfs). A cached run must never hide a hole punched afterwards.
/// </summary>
public sealed class FileBlockStatusCacheTests : IDisposable
{
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task A_hole_punched_after_a_cached_data_run_is_reported_as_zero()
    {
        await PunchHoleSupport.SkipUnlessAvailableAsync();
        const int Size = 1 << 20;
        var path = _dir.File("dense.raw");
        File.WriteAllBytes(path, Enumerable.Repeat((byte)7, Size).ToArray());
        await using var graph = new BlockGraph();
        var node = await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(path, Discard: FileDiscardMode.Unmap));

        // Fill the cache with one run covering the whole file, and answer twice from it.
        Assert.Equal(Size, (await node.GetBlockStatusAsync(0, Size)).Length);
        Assert.True((await node.GetBlockStatusAsync(512 * 1024, 4096)).IsData);

        await node.DiscardAsync(256 * 1024, 64 * 1024);
        var hole = await node.GetBlockStatusAsync(256 * 1024, 64 * 1024);
        Assert.True(hole.IsZero && !hole.IsData, $"a discarded range must read as a hole, got {hole}");
        var before = await node.GetBlockStatusAsync(0, Size);
        Assert.True(before.IsData);
        Assert.Equal(256 * 1024, before.Length);

        await node.WriteZeroesAsync(640 * 1024, 64 * 1024, RequestFlags.MayUnmap);
        Assert.True((await node.GetBlockStatusAsync(640 * 1024, 4096)).IsZero);
    }
}
