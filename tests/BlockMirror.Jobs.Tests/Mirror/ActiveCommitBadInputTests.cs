using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// An active commit refused for a bad option changes nothing: the base is neither reopened nor grown to the
/// top's size (it was grown before the options were checked), and no job or filter is left.
/// </summary>
public sealed class ActiveCommitBadInputTests
{
    public static TheoryData<string, string> BadOptions => new()
    {
        { "granularity", "Parameter 'granularity' expects a power of 2" },
        { "filter-node-name", "Invalid node-name: '1bad'" },
        { "job-id", "Invalid job ID 'bad id'" },
        { "buf-size", "Parameter 'buf-size' expects a positive value" },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public async Task A_refused_active_commit_leaves_a_smaller_base_as_it_was(string option, string message)
    {
        using var dir = TempDirectory.InMemory("blockmirror-commit-refused-");
        var (basePath, topPath) = (dir.File("base.qcow2"), dir.File("top.qcow2"));
        Qcow2Create.Create(basePath, new Qcow2CreateOptions { Size = 1 << 20 });
        Qcow2Create.Create(topPath, new Qcow2CreateOptions { Size = 2 << 20, BackingFile = basePath, BackingFormat = "qcow2" });
        var options = new MirrorOptions { JobId = "commit" };
        options = option switch
        {
            "granularity" => options with { Granularity = 3 * 1024 },
            "filter-node-name" => options with { FilterNodeName = "1bad" },
            "job-id" => options with { JobId = "bad id" },
            _ => options with { BufSize = -1 },
        };

        await using var graph = new BlockGraph();
        var top = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(topPath, "qcow2", NodeName: "top"));
        graph.AttachRoot(top, new RootParent("vm"));
        var @base = top.Backing!;
        var manager = new JobManager();

        var error = await Assert.ThrowsAsync<JobException>(() => MirrorJob.StartActiveCommitAsync(manager, graph, top, @base, options));
        Assert.Equal(message, error.Message);
        Assert.Equal(1 << 20, @base.Length);
        Assert.True(@base.ReadOnly);
        Assert.Empty(manager.Jobs);
    }
}
