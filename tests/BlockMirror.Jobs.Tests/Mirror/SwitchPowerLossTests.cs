using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The moment a mirror or an active commit completes, the guest runs on the target (or the base) alone, and the
/// management tool may delete the source. So everything the guest had written must be on the target's disk then,
/// its qcow2 metadata included, whether or not the guest ever flushed: a power loss right after the completion
/// must not take any of it. The target's file sits behind a <see cref="VolatileCacheFilter"/>, so the file below
/// holds at every moment what a power loss would leave; it is read as an image of its own right after the job ends.
/// </summary>
public sealed class SwitchPowerLossTests : IAsyncLifetime
{
    const long Size = 1 << 20;

    readonly TempDirectory _dir = new("blockmirror-switch-power-");
    readonly BlockGraph _graph = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _graph.DisposeAsync();
        _dir.Dispose();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task A_mirror_onto_a_qcow2_target_leaves_every_write_on_its_disk_when_it_completes(int seed)
    {
        var random = new Random(seed);
        var model = new byte[Size];
        random.NextBytes(model);
        await File.WriteAllBytesAsync(_dir.File("source.raw"), model);
        Qcow2Create.Create(_dir.File("target.qcow2"), new Qcow2CreateOptions { Size = Size, ClusterSize = 4096 });
        var source = await ImageFiles.OpenAsync(_graph, new ImageOpenOptions(_dir.File("source.raw"), "raw"));
        var target = await OpenBehindVolatileCacheAsync("target.qcow2", "dst", new Qcow2Options(), readOnly: false);
        var vm = _graph.AttachRoot(source, new RootParent("vm"), "vm", BlockPermissions.ConsistentRead | BlockPermissions.Write);

        var manager = new JobManager();
        var job = await MirrorJob.StartAsync(manager, _graph, source, target, new MirrorOptions { JobId = "mirror", Granularity = 4096 });
        await RunGuestAsync(vm, model, random, manager, job);

        await AssertDurableAsync("target.qcow2", model);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task An_active_commit_leaves_every_write_on_the_base_s_disk_when_it_completes(int seed)
    {
        var random = new Random(seed);
        var model = new byte[Size];
        Qcow2Create.Create(_dir.File("base.qcow2"), new Qcow2CreateOptions { Size = Size, ClusterSize = 4096 });
        Qcow2Create.Create(_dir.File("top.qcow2"), new Qcow2CreateOptions { Size = Size, ClusterSize = 4096, BackingFile = _dir.File("base.qcow2"), BackingFormat = "qcow2" });
        await Qcow2Images.FillAsync(_dir.File("base.qcow2"), model, Size, random, 16);
        await Qcow2Images.FillAsync(_dir.File("top.qcow2"), model, Size, random, 16);
        var @base = await OpenBehindVolatileCacheAsync("base.qcow2", "base", new Qcow2Options(), readOnly: true);
        @base.AutoReadOnly = true;
        var topFile = await FileDriver.OpenAsync(_graph, null, new FileDriverOptions(_dir.File("top.qcow2")));
        var top = await Qcow2Driver.OpenAsync(_graph, "top", topFile, new Qcow2Options { Backing = Qcow2BackingMode.Node, BackingNode = @base });
        var vm = _graph.AttachRoot(top, new RootParent("vm"), "vm", BlockPermissions.ConsistentRead | BlockPermissions.Write);

        var manager = new JobManager();
        var job = await MirrorJob.StartActiveCommitAsync(manager, _graph, top, @base, new MirrorOptions { JobId = "commit", Granularity = 4096 });
        await RunGuestAsync(vm, model, random, manager, job);

        await AssertDurableAsync("base.qcow2", model);
    }

    /// <summary>A qcow2 node over <paramref name="file"/>, with a volatile cache between the driver and the file.</summary>
    async Task<BlockNode> OpenBehindVolatileCacheAsync(string file, string name, Qcow2Options options, bool readOnly)
    {
        var node = await FileDriver.OpenAsync(_graph, null, new FileDriverOptions(_dir.File(file)), readOnly);
        var cache = await VolatileCacheFilter.OpenAsync(_graph, name + "-cache", node);
        return await Qcow2Driver.OpenAsync(_graph, name, cache, options, readOnly);
    }

    /// <summary>
    /// Writes at random (never flushing) while the job copies and after READY, then stops writing and completes the
    /// job; every write is in <paramref name="model"/>.
    /// </summary>
    static async Task RunGuestAsync(NodeEdge vm, byte[] model, Random random, JobManager manager, MirrorJob job)
    {
        async Task WriteSomeAsync(int count)
        {
            for (var i = 0; i < count; i++)
            {
                var offset = random.NextInt64(Size - 512) / 512 * 512;
                var length = (int)Math.Min(Size - offset, 512 * random.Next(1, 40));
                if (random.Next(4) == 0)
                {
                    await vm.WriteZeroesAsync(offset, length);
                    model.AsSpan((int)offset, length).Clear();
                }
                else
                {
                    random.NextBytes(model.AsSpan((int)offset, length));
                    await vm.WriteAsync(offset, model.AsMemory((int)offset, length));
                }
            }
        }

        await WriteSomeAsync(20);
        await MirrorTestRunner.WaitReadyAsync(manager, job);
        await WriteSomeAsync(20);
        job.Complete();
        await job.Finished.WaitAsync(MirrorTestRunner.Limit);
        Assert.Null(job.Error);
        Assert.Equal(model, await MirrorRig.ReadAllAsync(vm.Node));
    }

    /// <summary>The power goes now: the file below the cache, opened as an image of its own, reads <paramref name="model"/>.</summary>
    async Task AssertDurableAsync(string file, byte[] model)
    {
        var crashed = _dir.File("crashed-" + file);
        File.Copy(_dir.File(file), crashed, overwrite: true);
        await Qcow2Images.CheckAsync(crashed);
        var difference = await Qcow2Images.CompareFileAsync(crashed, model);
        Assert.True(difference is null, $"after a power loss at the completion, {file} differs from what the guest wrote: {difference}");
    }
}
