using System.Text.Json.Nodes;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// <c>replaces</c>: at completion the target takes the place of a named node under the source's filters
/// (here the source is a blkdebug filter the users write through and the node under it is replaced, as
/// QEMU's check_to_replace_node allows: iotest 041 TestReplaces), so the filter now filters the target.
/// Writes made before and after the switch all end up where the users now write.
/// </summary>
public sealed class MirrorReplacesTests : IDisposable
{
    const int Size = 1 << 20;

    readonly TempDirectory _dir = new("blockmirror-replaces-");

    public void Dispose() => _dir.Dispose();

    async Task AddRawAsync(DaemonHarness daemon, string name)
    {
        var path = _dir.File(name + ".raw");
        await File.WriteAllBytesAsync(path, new byte[Size]);
        await daemon.ExecuteAsync("blockdev-add", new JsonObject
        {
            ["driver"] = "raw", ["node-name"] = name, ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = path },
        });
    }

    [Fact]
    public async Task The_target_takes_the_place_of_the_node_under_the_filter_and_the_filter_filters_the_target()
    {
        await using var daemon = new DaemonHarness();
        await AddRawAsync(daemon, "src");
        await AddRawAsync(daemon, "tgt");
        await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "blkdebug", ["node-name"] = "dbg", ["image"] = "src" });
        var graph = daemon.Daemon.Graph;
        var vm = graph.AttachRoot(graph.FindNode("dbg")!, new RootParent("vm"));
        var before = Enumerable.Repeat((byte)0x5a, 8192).ToArray();
        await vm.WriteAsync(4096, before, Block.Io.RequestFlags.None, CancellationToken.None);

        await daemon.ExecuteAsync("blockdev-mirror", new JsonObject
        {
            ["job-id"] = "m0", ["device"] = "dbg", ["target"] = "tgt", ["sync"] = "full", ["replaces"] = "src",
        });
        await daemon.WaitStatusAsync("m0", JobStatus.Ready);
        await daemon.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m0" });
        await daemon.WaitStatusAsync("m0", JobStatus.Null);

        // The user's edge still leads to the filter, and the filter now leads to the target.
        Assert.Equal("dbg", vm.Node.Name);
        Assert.Equal("tgt", graph.FindNode("dbg")!.FilteredChild!.Node.Name);
        Assert.DoesNotContain(graph.FindNode("src")!.Parents, e => e.ParentNode is not null);
        var after = Enumerable.Repeat((byte)0xa5, 4096).ToArray();
        await vm.WriteAsync(65536, after, Block.Io.RequestFlags.None, CancellationToken.None);

        var target = await File.ReadAllBytesAsync(_dir.File("tgt.raw"));
        Assert.Equal(before, target.AsSpan(4096, 8192).ToArray());
        Assert.Equal(after, target.AsSpan(65536, 4096).ToArray());
        var source = await File.ReadAllBytesAsync(_dir.File("src.raw"));
        Assert.All(source.AsSpan(65536, 4096).ToArray(), b => Assert.Equal(0, b));
        await graph.DetachRootAsync(vm);
    }
}
