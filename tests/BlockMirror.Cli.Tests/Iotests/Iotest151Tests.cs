using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 151, "tests for active mirroring" (copy-mode=write-blocking), run unchanged on
/// qemu-storage-daemon 7.2 and on <c>blockmirror serve</c> (<see cref="IotestRun"/>): the source is a qcow2
/// image exported writable over NBD, the guest is qemu-io on that export, the target another qcow2 image.
/// Both daemons must give the same replies and events and leave the same data: a target that holds every
/// write, and where the iotest flushes before completing, a target identical to the source.
/// </summary>
/// <remarks>
/// The images are 32 MiB rather than 128, the iotest's eighths and 1 MiB requests kept. The iotest's guest
/// is qemu-io inside QEMU (its aio_write requests in flight while the job starts and runs); here it is
/// qemu-io processes on the export, not waited for until the iotest would. Its intersecting-writes case
/// orders requests with blkdebug breakpoints, which a daemon's client cannot reach: the overlapping writes
/// are sent at once by one qemu-io instead, so they meet in the mirror's filter in whatever order they
/// come. Its load case throttles the source to 16 IOPS on QEMU's virtual clock, which neither daemon has
/// here (BlockMirror has no throttle driver): the job is held back by a speed limit instead, and the guest
/// keeps writing until the job is seen to progress, which is the iotest's point (background copying goes on
/// under a steady load of active writes).
/// </remarks>
public sealed class Iotest151Tests : IDisposable
{
    const long ImageLength = 32L << 20;
    const long Eighth = ImageLength / 8;
    const long MiB = 1 << 20;

    readonly TempDirectory _root = new("bm-iotest151-");

    public void Dispose() => _root.Dispose();

    static Func<string, Task> SetUp(string size, params string[] sourceWrites) => async dir =>
    {
        await ImageRecipes.Qcow2Async(dir, "source.qcow2", size, [], sourceWrites);
        await ImageRecipes.Qcow2Async(dir, "target.qcow2", size, [], []);
    };

    static string[] Blockdevs(string dir) =>
        [.. IotestRun.Qcow2Node(dir, "source-node", "source.qcow2"), .. IotestRun.Qcow2Node(dir, "target-node", "target.qcow2")];

    /// <summary>The iotest's blockdev-mirror: job 'mirror', filter 'mirror-node', sync=full, write-blocking.</summary>
    static Task MirrorAsync(IotestSession s, JsonObject? more = null)
    {
        var arguments = new JsonObject
        {
            ["job-id"] = "mirror", ["filter-node-name"] = "mirror-node", ["device"] = "source-node", ["target"] = "target-node",
            ["sync"] = "full", ["copy-mode"] = "write-blocking",
        };
        foreach (var (key, value) in more ?? [])
        {
            arguments[key] = value?.DeepClone();
        }

        return s.RunAsync("blockdev-mirror", arguments);
    }

    /// <summary>qemu-io on the export: the commands run in one process, aio ones in flight together; pattern checks fail it.</summary>
    static Task GuestAsync(IotestSession s, params string[] commands) => ImageRecipes.QemuIoAsync(s.Uri, "raw", commands);

    /// <summary>1 MiB requests over [from, to) eighths of the image, aio_write -P pattern (or -z), then a flush.</summary>
    static string[] Requests(int from, int to, string what) =>
        [.. Enumerable.Range(0, (int)((to - from) * Eighth / MiB)).Select(i => $"aio_write {what} {from * Eighth + i * MiB} 1M"), "aio_flush"];

    /// <summary>
    /// 151 testActiveIO / testActiveIOFlushed: writes before the job starts, while it runs, and after READY
    /// (those settled by active mirroring alone), then block-job-complete; flushed, the guest's writes are all
    /// done before the completion, and source and target must be identical. Either way every write must be
    /// on the target at the end, through the mirror or, after the switch, directly; where the iotest's data
    /// and zero requests overlap in flight the order is theirs to choose, so those ranges are not read.
    /// </summary>
    static Func<IotestSession, Task> ActiveIo(bool flushed) => async s =>
    {
        List<Task> guest = [GuestAsync(s, [.. Requests(1, 3, "-P 2"), .. Requests(2, 3, "-z")])];
        await MirrorAsync(s);
        guest.Add(GuestAsync(s, [.. Requests(3, 5, "-P 3"), .. Requests(4, 5, "-z")]));
        await s.WaitReadyAsync();
        guest.Add(GuestAsync(s, [.. Requests(5, 7, "-P 3"), .. Requests(6, 7, "-z")]));
        if (flushed)
        {
            await Task.WhenAll(guest);
        }

        await s.RunAsync("block-job-complete", new JsonObject { ["device"] = "mirror" });
        await s.WaitGoneAsync();
        await Task.WhenAll(guest);
        await s.LogExportedFileAsync();
        await GuestAsync(s, $"read -P 1 0 {Eighth}", $"read -P 2 {Eighth} {Eighth}", $"read -P 3 {3 * Eighth} {Eighth}",
            $"read -P 3 {5 * Eighth} {Eighth}", $"read -P 1 {7 * Eighth} {Eighth}");
    };

    static readonly Func<string, Task> ActiveIoSetUp = SetUp($"{ImageLength}", $"write -P 1 0 {ImageLength}");

    /// <summary>
    /// 151 testActiveIO, on <c>blockmirror serve</c> only: completed while the guest's last writes are still
    /// in flight. qemu-storage-daemon 7.2 cannot run it: in most runs here it aborts on an assertion in
    /// mirror_run (<c>QLIST_EMPTY(&amp;bs-&gt;tracked_requests)</c>) or dies of SIGSEGV when the job completes with
    /// active writes in flight, so there is nothing stable to compare with; the events and data are QEMU's
    /// where it survives (and the flushed variant is compared).
    /// </summary>
    [SkippableFact]
    public async Task testActiveIO()
    {
        ExternalTool.Require("qemu-io");
        var dir = Directory.CreateDirectory(Path.Combine(_root.Path, "ours")).FullName;
        await ActiveIoSetUp(dir);
        List<string> log = [];
        var events = await DifferentialDaemon.Ours().RunAsync(dir, Blockdevs(dir), "source-node", (qmp, uri) => ActiveIo(flushed: false)(new IotestSession(qmp, dir, uri, log)));

        Assert.Equal(["blockdev-mirror: ok", "block-job-complete: ok", "exported: DIR/target.qcow2"], log);
        Assert.Equal(DifferentialDaemon.ReadyJobEvents, JobQmp.WithoutQuitDrainPauses(events));
    }

    [SkippableFact]
    public async Task testActiveIOFlushed()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, ActiveIoSetUp, Blockdevs, "source-node", ActiveIo(flushed: true));
        Assert.Equal(["blockdev-mirror: ok", "block-job-complete: ok", "exported: DIR/target.qcow2"], qsd.Log);
        await AssertCompletedCopyAsync(qsd, ours);
    }

    /// <summary>
    /// 151 testUnalignedActiveIO: a job that barely moves (speed 1, buf-size 256 KiB), a one-byte write into
    /// a dirty area (its chunk's edges are left to the background copy), then the job let go and completed:
    /// source and target identical.
    /// </summary>
    [SkippableFact]
    public async Task testUnalignedActiveIO()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, SetUp("4M", "write -P 1 0 2M"), Blockdevs, "source-node", async s =>
        {
            await MirrorAsync(s, new JsonObject { ["buf-size"] = MiB / 4, ["speed"] = 1 });
            await GuestAsync(s, $"write -P 2 {MiB + 42} 1");
            await s.RunAsync("block-job-set-speed", new JsonObject { ["device"] = "mirror", ["speed"] = 0 });
            await s.CompleteAndWaitAsync("mirror");
        });

        await AssertCompletedCopyAsync(qsd, ours);
    }

    /// <summary>
    /// 151 testIntersectingActiveIO: on a job that barely moves, four overlapping writes in flight at once
    /// (the iotest's [0, 1M), [0, 2M) twice, [1M, 3M)), which must wait for one another in the mirror's filter
    /// without deadlocking; then the job let go and completed: source and target identical.
    /// </summary>
    [SkippableFact]
    public async Task testIntersectingActiveIO()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, SetUp("4M", "write -P 1 0 2M"), Blockdevs, "source-node", async s =>
        {
            await MirrorAsync(s, new JsonObject { ["speed"] = 1 });
            await GuestAsync(s, "aio_write 0 1M", "aio_write 0 2M", "aio_write 0 2M", "aio_write 1M 2M", "aio_flush");
            await s.RunAsync("block-job-set-speed", new JsonObject { ["device"] = "mirror", ["speed"] = 0 });
            await s.CompleteAndWaitAsync("mirror");
            await GuestAsync(s, "read -P 0xcd 0 3M", "read -P 0 3M 1M");
        });

        await AssertCompletedCopyAsync(qsd, ours);
    }

    static async Task AssertCompletedCopyAsync(IotestRun.Outcome qsd, IotestRun.Outcome ours)
    {
        Assert.Equal(DifferentialDaemon.ReadyJobEvents, JobQmp.WithoutQuitDrainPauses(qsd.Events));
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/source.qcow2", $"{dir}/target.qcow2", "qcow2", "qcow2");
        }

        await IotestRun.AssertSameImageAsync(qsd, ours, "target.qcow2");
    }

    /// <summary>
    /// 151 TestThrottledWithNbdExport.testUnderLoad: the first half of the source holds data, the guest writes
    /// 4 KiB requests into the second half (where active mirroring adds nothing to the job's progress) without
    /// pause; the background copy must still make progress. The job is then cancelled, as in the iotest.
    /// </summary>
    [SkippableFact]
    public async Task testUnderLoad()
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root, SetUp("16M", "write -P 1 0 8M"), Blockdevs, "source-node", async s =>
        {
            // 64 KiB a pass at 1 MiB/s: the 8 MiB take seconds, and the job cannot be READY before it is looked at.
            await MirrorAsync(s, new JsonObject { ["buf-size"] = 65536, ["speed"] = MiB });
            using var stop = new CancellationTokenSource();
            var offset = 8 * MiB;
            var load = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    await GuestAsync(s, [.. Enumerable.Range(0, 16).Select(i => $"aio_write -P 42 {offset + i * 4096} 4k"), "aio_flush"]);
                    offset = offset + 16 * 4096 >= 16 * MiB ? 8 * MiB : offset + 16 * 4096;
                }
            });

            try
            {
                // The job counts its work once it has looked at the source (ours only after the start's reply).
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
                long start;
                while ((start = await RemainingAsync(s)) == 0)
                {
                    Assert.True(DateTime.UtcNow < deadline, "the job never counted its work");
                    await Task.Delay(10);
                }

                while (await RemainingAsync(s) >= start)
                {
                    Assert.False(load.IsCompleted, $"the guest stopped: {load.Exception}");
                    Assert.True(DateTime.UtcNow < deadline, "the job made no progress under load");
                    await Task.Delay(20);
                }

                s.Log.Add("progress under load: yes");
            }
            finally
            {
                await stop.CancelAsync();
                await load;
            }

            await s.RunAsync("block-job-cancel", new JsonObject { ["device"] = "mirror", ["force"] = true });
            await s.WaitGoneAsync();
        });

        Assert.Equal(
        [
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE aborting", "BLOCK_JOB_CANCELLED",
            "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
        ], JobQmp.WithoutQuitDrainPauses(qsd.Events));
    }

    /// <summary>What the job has left to do: query-jobs' total-progress minus current-progress.</summary>
    static async Task<long> RemainingAsync(IotestSession s)
    {
        var job = (await s.Qmp.ExecuteAsync("query-jobs"))!.AsArray().Single()!;
        return (long)job["total-progress"]! - (long)job["current-progress"]!;
    }
}
