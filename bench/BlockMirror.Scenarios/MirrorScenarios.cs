using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Scenarios;

/// <summary>
/// The mirror as a qemu-storage-daemon user runs it, over QMP, on both daemons alternately: blockdev-add the
/// target, blockdev-mirror, wait for READY, block-job-complete, wait for COMPLETED. Measures time to READY,
/// the pivot pause (complete to COMPLETED), the daemon's CPU time and peak memory. The live scenario
/// (<see cref="LiveScenarios"/>) runs the same steps with a writer on the source.
/// </summary>
static class MirrorScenarios
{
    /// <summary>dense: a raw file of random data mirrored onto a new raw file, O_DIRECT on both sides in both daemons.</summary>
    public static IEnumerable<Row> Dense(Options options)
    {
        var size = options.Quick ? 512L << 20 : 4L << 30;
        var source = ImageData.Dense(options.DataDirectory, size);
        return Run(options, $"dense raw->raw {size >> 20} MiB (QMP)", source, size, data: size);
    }

    /// <summary>
    /// sparse: a qcow2 (64 KiB clusters) with scattered data mirrored onto a new qcow2 by both daemons; and,
    /// in the same pairs, the same copy by <c>qemu-img convert -W -m 16</c> + sync, which QEMU's own mirror
    /// trails by 1.3 to 1.5 times.
    /// </summary>
    public static IEnumerable<Row> Sparse(Options options)
    {
        var (size, data) = options.Quick ? (4L << 30, 256L << 20) : (32L << 30, 2L << 30);
        var source = ImageData.Qcow2(ImageData.Sparse(options.DataDirectory, size, data));

        return Run(options, $"sparse qcow2->qcow2 {size >> 30} GiB ({data >> 20} MiB data) (QMP)", source, size, data, format: "qcow2");
    }

    static IEnumerable<Row> Run(Options options, string name, string source, long size, long data, string format = "raw")
    {
        var target = Path.Combine(options.DataDirectory, "mirror-target." + format);
        var converted = new List<double>();
        var convertedOurs = new List<double>();
        var (ourReady, theirReady, limits) = (new List<double>(), new List<double>(), new List<double>());
        var metrics = new MetricTable("qemu-storage-daemon");
        for (var pair = 0; pair < options.Pairs; pair++)
        {
            for (var turn = 0; turn < 2; turn++)
            {
                var mine = (turn == 0) == (pair % 2 == 1);
                PrepareTarget(target, format, size);
                var result = RunOnceAsync(options, mine, SourceArguments(source, format, socket: null), target, format).GetAwaiter().GetResult();
                metrics.Add(name, "time to READY", mine, result.ToReady, "s", "<= 1.0");
                (mine ? ourReady : theirReady).Add(result.ToReady);
                metrics.Add(name, "pivot pause (complete -> COMPLETED)", mine, result.PivotPause * 1000, "ms", "<= 0.1");
                metrics.Add(name, "daemon CPU per GiB", mine, result.CpuSeconds / (size / (double)(1L << 30)), "s", "<= 1.2");
                metrics.Add(name, "daemon peak RSS", mine, result.PeakRssMiB, "MiB", "<= 2.0");
                Console.Error.WriteLine($"{name}: pair {pair + 1} turn {turn + 1} done ({(mine ? "blockmirror" : "qemu-storage-daemon")}: READY {result.ToReady:0.00} s, pause {result.PivotPause * 1000:0.0} ms)");
                if (format == "qcow2" && mine)
                {
                    convertedOurs.Add(result.ToReady + result.PivotPause);
                }
            }

            // The disk's limit for copying the data, in the same pair.
            limits.Add(DiskCopyLimit.Measure(source, target, data));
            Console.Error.WriteLine($"{name}: pair {pair + 1}: the disk's copy limit {limits[^1]:0.00} s");

            if (format == "qcow2")
            {
                // The offline copy the mirror is measured against, on the same images in the same pair.
                File.Delete(target);
                Runner.DropCaches();
                converted.Add(Runner.Measure($"qemu-img convert -W -m 16 -f qcow2 -O qcow2 -o cluster_size=64k '{source}' '{target}' && sync").Seconds);
            }
        }

        if (converted.Count > 0)
        {
            yield return new Row(name, "READY + pivot vs offline copy", convertedOurs, converted, "s", "<= 0.8 (QEMU's mirror: 1.3-1.5)");
        }

        const string Limit = "the disk's copy limit (fio: sequential read and write of the data at once, O_DIRECT, 1 MiB x 16)";
        yield return new Row(name, "blockmirror time to READY vs the disk's copy limit", ourReady, limits, "s", "<= 1.15", Limit);
        yield return new Row(name, "qemu-storage-daemon time to READY vs the disk's copy limit", theirReady, limits, "s", null, Limit);

        File.Delete(target);
        foreach (var row in metrics.Rows())
        {
            yield return row;
        }
    }

    sealed record RunResult(double ToReady, double PivotPause, double CpuSeconds, double PeakRssMiB);

    static async Task<RunResult> RunOnceAsync(Options options, bool mine, List<string> arguments, string target, string format)
    {
        await using var daemon = await Daemon.StartAsync(options, mine, options.DataDirectory, arguments);
        var times = await MirrorOnceAsync(daemon.Qmp, target, format, "background", TimeSpan.FromMinutes(10));
        if (times.Refused is { } refused || times.Ready is null || times.PivotPause is null)
        {
            throw new InvalidOperationException($"{daemon.Name}: the mirror did not reach READY: {times.Refused ?? "timed out"}");
        }

        return new RunResult((times.Ready.Value - times.Started).TotalSeconds, times.PivotPause.Value, daemon.CpuSeconds(), daemon.PeakRssMiB());
    }

    /// <summary>Deletes the last run's target and creates a new empty one, then drops the page cache.</summary>
    internal static void PrepareTarget(string target, string format, long size)
    {
        File.Delete(target);
        Runner.Run($"qemu-img create -q -f {format} '{target}' {size}");
        Runner.DropCaches();
    }

    /// <summary>The daemon's options: the source node <c>src</c> (O_DIRECT), exported writable over NBD at <paramref name="socket"/> when given.</summary>
    internal static List<string> SourceArguments(string image, string format, string? socket)
    {
        var arguments = new List<string>
        {
            "--blockdev", $"driver=file,node-name=src-file,filename={image},cache.direct=on",
            "--blockdev", $"driver={format},node-name=src,file=src-file",
        };
        if (socket is not null)
        {
            File.Delete(socket);
            arguments.AddRange(["--nbd-server", $"addr.type=unix,addr.path={socket}", "--export", "type=nbd,id=exp0,node-name=src,name=disk,writable=on"]);
        }

        return arguments;
    }

    /// <summary>
    /// When the mirror started (wall clock), when it became READY (the event's own timestamp; null when it had
    /// not within the limit, and the job was cancelled), the pause from block-job-complete to BLOCK_JOB_COMPLETED
    /// as the client sees it, or why the daemon refused blockdev-mirror.
    /// </summary>
    internal sealed record MirrorTimes(DateTime Started, DateTime? Ready, double? PivotPause, string? Refused);

    /// <summary>
    /// blockdev-add the target (O_DIRECT), blockdev-mirror <c>src</c> onto it in <paramref name="copyMode"/>, wait
    /// for READY up to <paramref name="convergeWithin"/>, stay a second in READY (a writer keeps dirtying), then
    /// block-job-complete and wait for COMPLETED.
    /// </summary>
    internal static async Task<MirrorTimes> MirrorOnceAsync(QmpClient qmp, string target, string format, string copyMode, TimeSpan convergeWithin)
    {
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "tgt-file", ["filename"] = target, ["cache"] = new JsonObject { ["direct"] = true } });
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = format, ["node-name"] = "tgt", ["file"] = "tgt-file" });
        var started = DateTime.UtcNow;
        var reply = await qmp.CommandAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full", ["copy-mode"] = copyMode });
        if (reply["error"] is { } error)
        {
            return new MirrorTimes(started, null, null, (string?)error["desc"]);
        }

        // Polled rather than waited for with a timeout, so that the monitor's reader is never cut mid-line; the
        // time comes from the event's timestamp, not from when the poll saw it.
        var deadline = started + convergeWithin;
        JsonObject? ready;
        while ((ready = Find(qmp, "BLOCK_JOB_READY")) is null && DateTime.UtcNow < deadline)
        {
            if ((Find(qmp, "BLOCK_JOB_COMPLETED") ?? Find(qmp, "BLOCK_JOB_CANCELLED")) is { } ended)
            {
                throw new InvalidOperationException($"the mirror ended before READY: {ended.ToJsonString()}");
            }

            await Task.Delay(100);
            await qmp.CommandAsync("query-block-jobs");
        }

        if (ready is null)
        {
            await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "m", ["force"] = true });
            await qmp.WaitEventAsync("BLOCK_JOB_CANCELLED", timeout: TimeSpan.FromMinutes(5));
            return new MirrorTimes(started, null, null, null);
        }

        // A moment in READY (a writer keeps dirtying), then the switch.
        await Task.Delay(1000);
        var pivot = Stopwatch.StartNew();
        await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m" });
        await qmp.WaitEventAsync("BLOCK_JOB_COMPLETED", timeout: TimeSpan.FromMinutes(5));
        return new MirrorTimes(started, Timestamp(ready), pivot.Elapsed.TotalSeconds, null);
    }

    static JsonObject? Find(QmpClient qmp, string name) => qmp.Events.FirstOrDefault(e => (string?)e["event"] == name);

    static DateTime Timestamp(JsonObject e) =>
        DateTime.UnixEpoch.AddSeconds((long)e["timestamp"]!["seconds"]!).AddTicks((long)e["timestamp"]!["microseconds"]! * 10);
}
