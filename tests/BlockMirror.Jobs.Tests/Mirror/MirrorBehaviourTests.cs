using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// How a mirror ends (cancel before and after READY, forced or not, complete), and what it copies
/// (sync=none, a target that does not read zeroes, a zero-length source), with progress and the
/// source's fixed length while mirrored.
/// </summary>
public sealed class MirrorBehaviourTests
{
    static readonly string[] Ready = ["created", "running", "ready", "BLOCK_JOB_READY"];
    static readonly string[] CompletedEnd = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"];
    static readonly string[] CancelledEnd = ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"];

    // ----- Cancel -----

    [Fact]
    public async Task A_cancel_before_READY_stops_at_once_and_leaves_the_users_on_the_source()
    {
        // A slow job on a clock the test never moves: it copies a piece and then waits forever.
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 4096 });
        await MirrorTestRunner.WaitParkedAsync(job);
        Assert.True(job.DirtyBytes > 0);

        // Not forced, but before READY there is no consistent copy to finish: it is a forced cancel.
        await job.CancelAsync(force: false);
        await MirrorTestRunner.WaitFinishedAsync(job);

        Assert.Equal(["created", "running", .. CancelledEnd], rig.Log.Names);
        var cancelled = Assert.Single(rig.Log.Events.OfType<BlockJobCancelledEvent>());
        Assert.True(cancelled.Offset < cancelled.Len, $"offset {cancelled.Offset}, len {cancelled.Len}");
        Assert.Equal("Operation canceled", job.Error);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
        await AssertUsersWriteToAsync(rig, rig.SourceMemory);
    }

    [Fact]
    public async Task A_forced_cancel_aborts_the_copies_in_flight()
    {
        await using var rig = await MirrorRig.CreateAsync(gateTarget: true);
        rig.TargetGate.Close();
        var job = await rig.StartAsync(MirrorRig.Options());
        await rig.TargetGate.WaitArrivedAsync(1);

        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);

        Assert.Equal(["created", "running", .. CancelledEnd], rig.Log.Names);
        rig.AssertJobLeftNothing(usersOn: rig.Source);

        // The held write never reached the target.
        rig.TargetGate.Open();
        Assert.Equal(new byte[MirrorRig.DefaultSize], await MirrorRig.ReadAllAsync(rig.TargetMemory));
    }

    [Fact]
    public async Task A_cancel_after_READY_finishes_the_sync_and_leaves_a_point_in_time_copy()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var writer = Writer.Start(rig);
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);

        // Writers stop once they have written (under load the job can reach READY before the first write);
        // whatever they wrote must be on the target when the job ends.
        await writer.FirstWrite.WaitAsync(TimeSpan.FromSeconds(30));
        await writer.StopAsync();
        await job.CancelAsync(force: false);
        await MirrorTestRunner.WaitFinishedAsync(job);

        Assert.Equal([.. Ready, .. CompletedEnd], rig.Log.Names);
        Assert.Null(Assert.Single(rig.Log.Events.OfType<BlockJobCompletedEvent>()).Error);
        Assert.Null(job.Error);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
        MirrorRig.AssertSameBytes(writer.Model, await MirrorRig.ReadAllAsync(rig.SourceMemory), "source vs the writes");
        await rig.AssertTargetEqualsSourceAsync();
        Assert.True(writer.Writes > 0);
    }

    [Fact]
    public async Task A_forced_cancel_after_READY_reports_cancelled_and_leaves_the_users_on_the_source()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);

        Assert.Equal([.. Ready, .. CancelledEnd], rig.Log.Names);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
        await AssertUsersWriteToAsync(rig, rig.SourceMemory);
    }

    [Fact]
    public async Task Complete_is_refused_once_a_cancel_is_under_way()
    {
        await using var rig = await MirrorRig.CreateAsync(gateTarget: true);
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);

        // A write after READY makes the cancel's final sync copy it; that copy is held at the target: the
        // job is still ready, with a cancel requested. (With nothing written since READY the final flush
        // would have nothing to do and be skipped.)
        rig.TargetGate.Close();
        var arrived = rig.TargetGate.Arrived;
        await rig.Vm.WriteAsync(0, Enumerable.Repeat((byte)0x5c, 4096).ToArray());
        await job.CancelAsync(force: false);
        await rig.TargetGate.WaitArrivedAsync(arrived + 1);
        Assert.Equal(JobStatus.Ready, job.Status);
        var ex = Assert.Throws<JobException>(job.Complete);
        Assert.Equal("The active block job 'mirror0' cannot be completed", ex.Message);

        rig.TargetGate.Open();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        rig.AssertJobLeftNothing(usersOn: rig.Source);
    }

    // ----- Complete -----

    [Fact]
    public async Task Complete_moves_every_user_of_the_source_to_the_target()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var export = rig.Graph.AttachRoot(rig.Source, new RootParent("export"), "export");
        var writer = Writer.Start(rig);
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);

        // The writer carries on, now on the target; stop it and check every write is there.
        await writer.StopAsync();
        Assert.Null(job.Error);
        Assert.Equal([.. Ready, .. CompletedEnd], rig.Log.Names);
        Assert.Same(rig.Target, rig.Vm.Node);
        Assert.Same(rig.Target, export.Node);
        Assert.DoesNotContain(rig.Graph.Nodes, n => n.Driver.DriverName == "mirror_top");
        Assert.Empty(rig.Source.DirtyBitmaps);
        Assert.Equal([rig.Vm, export], rig.Graph.Roots);
        Assert.NotNull(job.PivotPause);
        MirrorRig.AssertSameBytes(writer.Model, await MirrorRig.ReadAllAsync(rig.TargetMemory), "target vs the writes");
        Assert.True(writer.Writes > 0);
    }

    [Fact]
    public async Task Complete_in_standby_pivots_only_after_resume()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        job.Pause();
        await MirrorTestRunner.WaitParkedAsync(job, JobStatus.Standby);

        job.Complete();
        await Task.Delay(50);
        Assert.Equal(JobStatus.Standby, job.Status);
        Assert.Same(rig.Source, rig.Vm.Node.FilteredChild!.Node);

        job.Resume();
        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        Assert.Equal([.. Ready, "standby", "ready", .. CompletedEnd], rig.Log.Names);
        Assert.Same(rig.Target, rig.Vm.Node);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_zero_length_source_is_ready_at_once(bool complete)
    {
        await using var rig = await MirrorRig.CreateAsync(size: 0);
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        var ready = Assert.Single(rig.Log.Events.OfType<BlockJobReadyEvent>());
        Assert.Equal((0L, 0L), (ready.Len, ready.Offset));

        if (complete)
        {
            job.Complete();
        }
        else
        {
            await job.CancelAsync();
        }

        await MirrorTestRunner.WaitFinishedAsync(job);
        Assert.Null(job.Error);
        Assert.Equal([.. Ready, .. CompletedEnd], rig.Log.Names);
        rig.AssertJobLeftNothing(usersOn: complete ? rig.Target : rig.Source);
    }

    // ----- What is copied -----

    [Fact]
    public async Task Sync_none_copies_only_what_is_written_after_the_start()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options() with { Sync = MirrorSyncMode.None });

        // In a chunk that held zeroes: its copy is exactly the new write (the mirror copies whole chunks).
        const long offset = 600 * 1024;
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 7 + 1)).ToArray();
        await rig.Vm.WriteAsync(offset, data);
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);

        Assert.Null(job.Error);
        var expected = new byte[MirrorRig.DefaultSize];
        data.CopyTo(expected, offset);
        MirrorRig.AssertSameBytes(expected, await MirrorRig.ReadAllAsync(rig.TargetMemory), "target vs the one write");

        // One chunk copied in all (READY may have come before the write; the copy then followed it).
        Assert.Equal(MirrorRig.Chunk, Assert.Single(rig.Log.Events.OfType<BlockJobCompletedEvent>()).Offset);
    }

    [Fact]
    public async Task A_target_that_does_not_read_zeroes_ends_up_equal_to_the_source_zero_ranges_included()
    {
        await using var rig = await MirrorRig.CreateAsync(targetZeroInit: false);
        var before = await MirrorRig.ReadAllAsync(rig.TargetMemory);
        Assert.All(before.Take(4096), b => Assert.Equal(0xA5, b));

        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);

        await rig.AssertTargetEqualsSourceAsync();
        var zeroRange = (await MirrorRig.ReadAllAsync(rig.TargetMemory)).AsSpan(512 * 1024, 128 * 1024);
        Assert.True(zeroRange.IndexOfAnyExcept((byte)0) < 0, "the zero range between the data still holds the target's old bytes");
    }

    [Fact]
    public async Task The_source_cannot_be_resized_while_it_is_mirrored()
    {
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 4096 });
        await MirrorTestRunner.WaitParkedAsync(job);

        foreach (var length in new[] { 2 * MirrorRig.DefaultSize, MirrorRig.DefaultSize / 2 })
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(() => rig.Vm.TruncateAsync(length).AsTask());
            Assert.Equal(BlockErrno.EBUSY, ex.Errno);
            Assert.Equal(MirrorRig.DefaultSize, rig.Source.Length);
            Assert.Equal(MirrorRig.DefaultSize, rig.Vm.Node.Length);
        }

        job.SetSpeed(0);
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        await job.CancelAsync();
        await MirrorTestRunner.WaitFinishedAsync(job);
        await rig.AssertTargetEqualsSourceAsync();

        // Once the job is gone, so is the restriction.
        await rig.Vm.TruncateAsync(2 * MirrorRig.DefaultSize);
        Assert.Equal(2 * MirrorRig.DefaultSize, rig.Source.Length);
    }

    [Fact]
    public async Task Neither_the_source_nor_the_target_node_can_be_resized_directly_while_mirrored()
    {
        // Not only through the mirror filter: a truncate sent to the nodes themselves is refused too.
        var time = new ManualTimeProvider();
        await using var rig = await MirrorRig.CreateAsync(time: time);
        var job = await rig.StartAsync(MirrorRig.Options() with { Speed = 4096 });
        await MirrorTestRunner.WaitParkedAsync(job);

        foreach (var node in new[] { rig.Source, rig.Target })
        {
            var ex = await Assert.ThrowsAsync<BlockIOException>(() => node.TruncateAsync(2 * MirrorRig.DefaultSize).AsTask());
            Assert.Equal(BlockErrno.EBUSY, ex.Errno);
            Assert.Contains($"block job '{job.Id}'", ex.Message);
            Assert.Equal(MirrorRig.DefaultSize, node.Length);
        }

        await job.CancelAsync(force: true);
        await MirrorTestRunner.WaitFinishedAsync(job);
        await rig.Target.TruncateAsync(2 * MirrorRig.DefaultSize);
        Assert.Equal(2 * MirrorRig.DefaultSize, rig.Target.Length);
    }

    [Fact]
    public async Task Progress_offset_reaches_len_at_READY_and_len_covers_the_data()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await rig.StartAsync(MirrorRig.Options());
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);

        var ready = Assert.Single(rig.Log.Events.OfType<BlockJobReadyEvent>());
        Assert.Equal(ready.Len, ready.Offset);
        Assert.True(ready.Len >= 9 * MirrorRig.Chunk, $"len {ready.Len} is less than the data");
        var info = job.GetInfo();
        Assert.Equal((info.Len, true), (info.Offset, info.Ready));
        Assert.Equal((job.ProgressCurrent, job.ProgressTotal), (info.Offset, info.Len));

        job.Complete();
        await MirrorTestRunner.WaitFinishedAsync(job);
        var completed = Assert.Single(rig.Log.Events.OfType<BlockJobCompletedEvent>());
        Assert.Equal(completed.Len, completed.Offset);
        Assert.True(completed.Len >= ready.Len);
    }

    // ----- Helpers -----

    /// <summary>A write through the users' edge lands on <paramref name="expected"/> and no bitmap tracks it.</summary>
    static async Task AssertUsersWriteToAsync(MirrorRig rig, BlockNode expected)
    {
        var data = Enumerable.Repeat((byte)0xee, 4096).ToArray();
        await rig.Vm.WriteAsync(8192, data);
        var back = new byte[4096];
        await expected.ReadAsync(8192, back);
        Assert.Equal(data, back);
        Assert.Empty(rig.Source.DirtyBitmaps);
    }

    /// <summary>One writer through the users' edge: random 4 KiB writes, recorded in a model of the disk.</summary>
    sealed class Writer
    {
        readonly CancellationTokenSource _stop = new();
        readonly TaskCompletionSource _firstWrite = new(TaskCreationOptions.RunContinuationsAsynchronously);
        Task _task = Task.CompletedTask;

        Writer(byte[] model) => Model = model;

        public byte[] Model { get; }

        public int Writes { get; private set; }

        /// <summary>Completes once the first write has reached the disk and the model.</summary>
        public Task FirstWrite => _firstWrite.Task;

        public static Writer Start(MirrorRig rig)
        {
            var writer = new Writer((byte[])rig.Content.Clone());
            writer._task = Task.Run(() => writer.RunAsync(rig.Vm));
            return writer;
        }

        async Task RunAsync(NodeEdge vm)
        {
            var random = new Random(77);
            var buffer = new byte[4096];
            while (!_stop.IsCancellationRequested)
            {
                var offset = random.NextInt64(Model.Length / buffer.Length) * buffer.Length;
                random.NextBytes(buffer);
                await vm.WriteAsync(offset, buffer);
                buffer.CopyTo(Model, offset);
                Writes++;
                _firstWrite.TrySetResult();
                await Task.Delay(1);
            }
        }

        public async Task StopAsync()
        {
            await _stop.CancelAsync();
            await _task;
        }
    }
}
