using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// A mirror refused at the start: a <see cref="JobException"/> with QEMU's (or our documented) message,
/// and nothing changed: no job, no filter, no dirty bitmap, no edge moved or added, no byte written.
/// </summary>
public sealed class MirrorBadInputTests
{
    const long Size = MirrorRig.DefaultSize;

    [Theory]
    [InlineData(3 * 1024, "Parameter 'granularity' expects a power of 2")]
    [InlineData(96 * 1024, "Parameter 'granularity' expects a power of 2")]
    [InlineData(128L << 20, "Parameter 'granularity' expects a value in range [512B, 64MB]")]
    [InlineData(256, "Parameter 'granularity' expects a value in range [512B, 64MB]")]
    [InlineData(-4096, "Parameter 'granularity' expects a value in range [512B, 64MB]")]
    public async Task A_bad_granularity_is_refused(long granularity, string message)
    {
        await using var rig = await CreateRigAsync();
        await AssertRefusedAsync(rig, rig.Source, rig.Target, Options() with { Granularity = granularity }, message);
    }

    [Fact]
    public async Task The_granularity_limits_themselves_are_accepted()
    {
        foreach (var granularity in new[] { 512L, 64L << 20 })
        {
            await using var rig = await CreateRigAsync();
            var job = await rig.StartAsync(Options() with { Granularity = granularity, BufSize = 0 });
            Assert.Equal(granularity, job.Granularity);
            await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        }
    }

    /// <summary>QEMU's mirror_start_job rounds buf-size up to whole chunks (iotest 041 test_small_buffer: 4 KiB).</summary>
    [Theory]
    [InlineData(4096, 65536)]
    [InlineData(65537, 131072)]
    [InlineData(1, 65536)]
    public async Task A_buffer_smaller_than_or_not_a_multiple_of_the_granularity_is_rounded_up_to_whole_chunks(long bufSize, long rounded)
    {
        await using var rig = await CreateRigAsync();
        var job = await rig.StartAsync(Options() with { Granularity = 65536, BufSize = bufSize });
        Assert.Equal(rounded, job.BufSize);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        Assert.Null(job.Error);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_negative_buffer_size_is_refused()
    {
        await using var rig = await CreateRigAsync();
        await AssertRefusedAsync(rig, rig.Source, rig.Target, Options() with { BufSize = -1 }, "Parameter 'buf-size' expects a positive value");
    }

    [Fact]
    public async Task A_negative_speed_is_refused()
    {
        await using var rig = await CreateRigAsync();
        await AssertRefusedAsync(rig, rig.Source, rig.Target, Options() with { Speed = -1 }, "Invalid parameter 'speed'");
    }

    [Theory]
    [InlineData(Size - 512)]
    [InlineData(Size + 512)]
    [InlineData(0)]
    public async Task A_target_of_another_size_fails_the_job_before_anything_is_written(long targetSize)
    {
        // QEMU's mirror_run: the job starts, then fails with this error in its COMPLETED event (iotest 041's
        // size checks); nothing reaches the target and the graph is as it was.
        await using var rig = await CreateRigAsync();
        var other = await MemoryDriver.OpenAsync(rig.Graph, "other", new MemoryDriverOptions(targetSize, ZeroInit: false));
        var before = await MirrorRig.ReadAllAsync(other);
        var job = await MirrorJob.StartAsync(rig.Manager, rig.Graph, rig.Source, other, Options());
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Equal("Source and target image have different sizes", job.Error);
        MirrorRig.AssertSameBytes(before, await MirrorRig.ReadAllAsync(other), "target after the failed job");
        Assert.DoesNotContain(rig.Graph.Nodes, n => n.Driver.DriverName == "mirror_top");
        await AssertSourceUsableAsync(rig);
    }

    [Fact]
    public async Task Mirroring_a_node_into_itself_is_refused()
    {
        await using var rig = await CreateRigAsync();
        await AssertRefusedAsync(rig, rig.Source, rig.Source, Options(), "Can't mirror node into itself");
    }

    [Fact]
    public async Task A_read_only_target_is_refused()
    {
        await using var rig = await CreateRigAsync();
        var readOnly = await MemoryDriver.OpenAsync(rig.Graph, "ro", new MemoryDriverOptions(Size), readOnly: true);
        await AssertRefusedAsync(rig, rig.Source, readOnly, Options(), "Block node is read-only");
    }

    [Theory]
    [InlineData("0mirror")]
    [InlineData("")]
    [InlineData("mirror 0")]
    public async Task An_invalid_job_id_is_refused(string id)
    {
        await using var rig = await CreateRigAsync();
        await AssertRefusedAsync(rig, rig.Source, rig.Target, Options(id), $"Invalid job ID '{id}'");
    }

    [Fact]
    public async Task An_invalid_filter_node_name_is_refused()
    {
        await using var rig = await CreateRigAsync();
        await AssertRefusedAsync(rig, rig.Source, rig.Target, Options() with { FilterNodeName = "0top" }, "Invalid node-name: '0top'");
    }

    [Fact]
    public async Task A_filter_node_name_already_taken_is_refused()
    {
        // The graph refuses it (its own error type, QEMU's wording), inside the drained section; the
        // section ends and nothing else has happened yet.
        await using var rig = await CreateRigAsync();
        var before = await GraphState.OfAsync(rig, rig.Source, rig.Target);
        var ex = await Assert.ThrowsAnyAsync<InvalidOperationException>(() => rig.StartAsync(Options() with { FilterNodeName = "src-mem" }));
        Assert.Equal("Duplicate nodes with node-name='src-mem'", ex.Message);
        Assert.Equal(before, await GraphState.OfAsync(rig, rig.Source, rig.Target));
        await AssertSourceUsableAsync(rig);
    }

    // ----- Against a running mirror -----

    [Theory]
    [InlineData(true, false, "src")]
    [InlineData(false, true, "dst")]
    [InlineData(true, true, "src")]
    public async Task A_second_mirror_on_a_node_a_running_mirror_uses_is_refused(bool sameSource, bool sameTarget, string busy)
    {
        var time = new ManualTimeProvider();
        await using var rig = await CreateRigAsync(time);
        var running = await StartHeldAsync(rig);
        var otherSource = await MemoryDriver.OpenAsync(rig.Graph, "other-src", new MemoryDriverOptions(Size));
        var otherTarget = await MemoryDriver.OpenAsync(rig.Graph, "other-dst", new MemoryDriverOptions(Size));

        await AssertRefusedAsync(rig, sameSource ? rig.Source : otherSource, sameTarget ? rig.Target : otherTarget, Options("second"),
            $"Node '{busy}' is busy: block device is in use by block job: mirror", running);

        // The running job is untouched and still works.
        Assert.Equal(JobStatus.Running, running.Status);
        running.SetSpeed(0);
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, running);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_second_mirror_with_the_id_of_a_running_one_is_refused()
    {
        var time = new ManualTimeProvider();
        await using var rig = await CreateRigAsync(time);
        var running = await StartHeldAsync(rig);
        var otherSource = await MemoryDriver.OpenAsync(rig.Graph, "other-src", new MemoryDriverOptions(Size));
        var otherTarget = await MemoryDriver.OpenAsync(rig.Graph, "other-dst", new MemoryDriverOptions(Size));

        await AssertRefusedAsync(rig, otherSource, otherTarget, Options(running.Id), $"Job ID '{running.Id}' already in use", running);
        Assert.Equal(JobStatus.Running, running.Status);
    }

    // ----- Helpers -----

    static MirrorOptions Options(string id = "mirror0") => MirrorRig.Options(id);

    /// <summary>A rig whose target holds a pattern, so that any byte a refused start wrote would show.</summary>
    static async Task<MirrorRig> CreateRigAsync(TimeProvider? time = null)
    {
        var rig = await MirrorRig.CreateAsync(time: time);
        await rig.TargetMemory.WriteAsync(0, Enumerable.Repeat((byte)0x5a, 8192).ToArray());
        return rig;
    }

    /// <summary>Starts a mirror that stays running: a slow speed on a clock the test never moves.</summary>
    static async Task<MirrorJob> StartHeldAsync(MirrorRig rig)
    {
        var job = await rig.StartAsync(Options() with { Speed = 4096 });
        using var cts = new CancellationTokenSource(MirrorTestRunner.Limit);
        while (job.IsBusy)
        {
            await Task.Delay(1, cts.Token);
        }

        Assert.Equal(JobStatus.Running, job.Status);
        return job;
    }

    static async Task AssertRefusedAsync(MirrorRig rig, BlockNode source, BlockNode target, MirrorOptions options, string message,
        MirrorJob? running = null)
    {
        var before = await GraphState.OfAsync(rig, source, target);
        var events = rig.Log.Count;
        var ex = await Assert.ThrowsAsync<JobException>(() => MirrorJob.StartAsync(rig.Manager, rig.Graph, source, target, options));
        Assert.Equal(message, ex.Message);

        Assert.Equal(before, await GraphState.OfAsync(rig, source, target));
        Assert.Equal(events, rig.Log.Count);
        Assert.Equal(running is null ? Array.Empty<Job>() : [running], rig.Manager.Jobs);
        if (running is null)
        {
            Assert.DoesNotContain(rig.Graph.Nodes, n => n.Driver.DriverName == "mirror_top");
            await AssertSourceUsableAsync(rig);
        }
    }

    /// <summary>The source's users still reach it directly: a write goes through and nothing tracks it.</summary>
    static async Task AssertSourceUsableAsync(MirrorRig rig)
    {
        Assert.Same(rig.Source, rig.Vm.Node);
        await rig.Vm.WriteAsync(0, new byte[512]);
        Assert.Empty(rig.Source.DirtyBitmaps);
    }

    /// <summary>What a refused start must leave as it was.</summary>
    sealed record GraphState(string Nodes, string Roots, string SourceParents, string TargetParents, int SourceBitmaps,
        int TargetBitmaps, string VmNode, string TargetBytes)
    {
        public static async Task<GraphState> OfAsync(MirrorRig rig, BlockNode source, BlockNode target)
        {
            var bytes = await MirrorRig.ReadAllAsync(target);
            return new GraphState(
                string.Join(",", rig.Graph.Nodes.Select(n => $"{n.Name}:{n.Driver.DriverName}").Order(StringComparer.Ordinal)),
                string.Join(",", rig.Graph.Roots.Select(e => e.ToString())),
                string.Join(",", source.Parents.Select(e => e.ToString())),
                string.Join(",", target.Parents.Select(e => e.ToString())),
                source.DirtyBitmaps.Count,
                target.DirtyBitmaps.Count,
                rig.Vm.Node.Name,
                Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes)));
        }
    }
}
