using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;

namespace BlockMirror.Scenarios;

/// <summary>
/// sparse-scale (issue 20): a huge sparse disk mirrored over QMP (blockdev-mirror, sync=full) onto a fresh target
/// made by <c>qemu-img create</c>, on both daemons alternately: a 4 TiB raw with 320 MiB of data in five extents,
/// and a 1 TiB qcow2 with 1 GiB of data in eight. Measures time to READY against copying the data alone, the
/// job's len at READY, the target's allocation, the daemon's peak memory. A daemon that allocates more than
/// 8 GiB of target before READY (writing zeroes over the holes) is stopped there, and that is reported instead:
/// the disk would otherwise fill. Zero writes allocate at tens of GiB a second (fallocate ZERO_RANGE reserves
/// unwritten extents), so the allocation is watched every 2 ms with stat(2), and a daemon past the limit is
/// frozen (SIGSTOP) at once, its peak memory read, and killed.
/// </summary>
static partial class ScaleScenarios
{
    const long StopAllocation = 8L << 30;

    public static IEnumerable<Row> SparseScale(Options options)
    {
        var directory = options.DataDirectory;
        var (rawSize, rawExtent) = options.Quick ? (64L << 30, 16L << 20) : (4L << 40, 64L << 20);
        var raw = ImageData.Extents(directory, rawSize, 5, rawExtent);
        foreach (var row in Run(options, $"sparse-scale raw {Size(rawSize)} ({Size(5 * rawExtent)} data)", raw, "raw", rawSize, 5 * rawExtent,
                     target => CopyExtents(raw, target, rawSize, 5, rawExtent)))
        {
            yield return row;
        }

        // The same onto a target that is one hole (truncate): qemu-img create allocates a raw file's first 4 KiB,
        // which hides from a cheap look at the target that it reads as zeroes.
        foreach (var row in Run(options, $"sparse-scale raw {Size(rawSize)} ({Size(5 * rawExtent)} data), target made by truncate", raw, "raw", rawSize, 5 * rawExtent,
                     target => CopyExtents(raw, target, rawSize, 5, rawExtent), holeTarget: true))
        {
            yield return row;
        }

        var (qcowSize, qcowExtent) = options.Quick ? (16L << 30, 32L << 20) : (1L << 40, 128L << 20);
        var qcow2 = ImageData.Qcow2Extents(directory, qcowSize, 8, qcowExtent);
        foreach (var row in Run(options, $"sparse-scale qcow2 {Size(qcowSize)} ({Size(8 * qcowExtent)} data)", qcow2, "qcow2", qcowSize, 8 * qcowExtent,
                     target => Runner.Measure($"qemu-img convert -W -m 16 -f qcow2 -O qcow2 '{qcow2}' '{target}' && sync").Seconds))
        {
            yield return row;
        }
    }

    static string Size(long bytes) => bytes >= 1L << 40 ? $"{bytes >> 40} TiB" : bytes >= 1L << 30 ? $"{bytes >> 30} GiB" : $"{bytes >> 20} MiB";

    /// <summary>The data alone: each extent copied with dd (O_DIRECT both sides) into a sparse file, then sync.</summary>
    static double CopyExtents(string source, string target, long size, int extents, long extent)
    {
        Runner.Run($"truncate -s {size} '{target}'");
        var copies = string.Join(" && ", Enumerable.Range(0, extents).Select(i =>
            $"dd if='{source}' of='{target}' bs=1M skip={ImageData.ExtentOffset(size, extents, i) >> 20} seek={ImageData.ExtentOffset(size, extents, i) >> 20} count={extent >> 20} iflag=direct oflag=direct conv=notrunc status=none"));
        return Runner.Measure($"{copies} && sync").Seconds;
    }

    static IEnumerable<Row> Run(Options options, string name, string source, string format, long size, long data, Func<string, double> copyData, bool holeTarget = false)
    {
        var target = Path.Combine(options.DataDirectory, "scale-target." + format);
        var metrics = new MetricTable("qemu-storage-daemon");
        List<double> ourReady = [], theirReady = [], dataCopies = [];
        for (var pair = 0; pair < options.Pairs; pair++)
        {
            for (var turn = 0; turn < 2; turn++)
            {
                var mine = (turn == 0) == (pair % 2 == 1);
                if (holeTarget)
                {
                    File.Delete(target);
                    Runner.Run($"truncate -s {size} '{target}'");
                    Runner.DropCaches();
                }
                else
                {
                    MirrorScenarios.PrepareTarget(target, format, size);
                }

                var result = RunOnceAsync(options, mine, source, format, target).GetAwaiter().GetResult();
                File.Delete(target);
                var who = mine ? "blockmirror" : "qemu-storage-daemon";
                if (result.Ready)
                {
                    (mine ? ourReady : theirReady).Add(result.Seconds);
                    metrics.Add(name, "time to READY", mine, result.Seconds, "s");
                    metrics.Add(name, "len at READY / data", mine, result.Len / (double)data, "x");
                    metrics.Add(name, "target allocated at READY / data", mine, result.Allocated / (double)data, "x");
                    metrics.Add(name, "target allocated after quit / data", mine, result.AllocatedAfterQuit / (double)data, "x", "<= 1.1");
                }
                else
                {
                    metrics.Add(name, $"stopped: allocated > {StopAllocation >> 30} GiB before READY, after", mine, result.Seconds, "s");
                    metrics.Add(name, "stopped: target allocated", mine, result.Allocated / (double)(1L << 20), "MiB");
                    metrics.Add(name, "stopped: target allocated after quit", mine, result.AllocatedAfterQuit / (double)(1L << 20), "MiB");
                    metrics.Add(name, "stopped: offset / len", mine, result.Offset / (double)Math.Max(1, result.Len), "x");
                }

                metrics.Add(name, "daemon peak RSS", mine, result.PeakRssMiB, "MiB", "< 64 MiB");
                Console.Error.WriteLine($"{name}: pair {pair + 1} turn {turn + 1} done ({who}: {(result.Ready ? "READY" : "stopped")} after {result.Seconds:0.00} s, len {result.Len >> 20} MiB, target {result.Allocated >> 20} MiB allocated, peak {result.PeakRssMiB:0.0} MiB)");
            }

            // The copy the mirror is measured against, on the same images in the same pair.
            File.Delete(target);
            Runner.DropCaches();
            dataCopies.Add(copyData(target));
            File.Delete(target);
        }

        const string Against = "copying the data alone (dd of the raw extents; qemu-img convert -W -m 16 of the qcow2) + sync";
        yield return new Row(name, "blockmirror time to READY vs the data alone", ourReady, dataCopies, "s", "<= 1.5", Against);
        yield return new Row(name, "qemu-storage-daemon time to READY vs the data alone", theirReady, dataCopies, "s", null, Against);
        foreach (var row in metrics.Rows())
        {
            yield return row;
        }
    }

    sealed record ScaleRun(bool Ready, double Seconds, long Len, long Offset, long Allocated, long AllocatedAfterQuit, double PeakRssMiB);

    /// <summary>
    /// One mirror: until READY, or until the target holds more than <see cref="StopAllocation"/> (the job is then
    /// cancelled with force). Polls the job and the target's allocation every 50 ms. The target's allocation is
    /// taken at that moment and again once the daemon has quit (and closed the image: ours gives back there
    /// the steps its qcow2 driver allocated ahead of the image's end).
    /// </summary>
    static async Task<ScaleRun> RunOnceAsync(Options options, bool mine, string source, string format, string target)
    {
        ScaleRun run;
        await using (var daemon = await Daemon.StartAsync(options, mine, options.DataDirectory, MirrorScenarios.SourceArguments(source, format, socket: null)))
        {
            run = await MirrorUntilReadyOrStoppedAsync(daemon, format, target);
        }

        return run with { AllocatedAfterQuit = Allocated(target) };
    }

    static async Task<ScaleRun> MirrorUntilReadyOrStoppedAsync(Daemon daemon, string format, string target)
    {
        var qmp = daemon.Qmp;
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "tgt-file", ["filename"] = target, ["cache"] = new JsonObject { ["direct"] = true } });
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = format, ["node-name"] = "tgt", ["file"] = "tgt-file" });
        var clock = Stopwatch.StartNew();
        using var watching = new CancellationTokenSource();
        var watch = Task.Run(() => WatchAllocation(daemon, target, clock, watching.Token));
        try
        {
            await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" });
            long len = 0, offset = 0;
            while (!watch.IsCompleted)
            {
                JsonArray jobs;
                try
                {
                    jobs = (JsonArray)(await qmp.ExecuteAsync("query-block-jobs"))!;
                }
                catch (Exception e) when (e is IOException or EndOfStreamException or InvalidOperationException)
                {
                    // The watch killed the daemon while we asked.
                    if (await Task.WhenAny(watch, Task.Delay(TimeSpan.FromSeconds(5))) == watch && watch.Result is not null)
                    {
                        break;
                    }

                    throw;
                }

                if (jobs.Count == 0)
                {
                    throw new InvalidOperationException($"{daemon.Name}: the mirror ended before READY: {string.Join(", ", qmp.Events.Select(e => e.ToJsonString()))}");
                }

                (len, offset) = ((long)jobs[0]!["len"]!, (long)jobs[0]!["offset"]!);
                if (qmp.Events.Any(e => (string?)e["event"] == "BLOCK_JOB_READY"))
                {
                    var seconds = clock.Elapsed.TotalSeconds;
                    await watching.CancelAsync();
                    if (await watch is { } late)
                    {
                        // Stopped past the limit in the moment READY came: the stop counts.
                        return late with { Len = len, Offset = offset };
                    }

                    var peak = daemon.PeakRssMiB();
                    await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "m", ["force"] = true });
                    await qmp.WaitEventAsync("BLOCK_JOB_CANCELLED", timeout: TimeSpan.FromMinutes(5));
                    return new ScaleRun(true, seconds, len, offset, Allocated(target), 0, peak);
                }

                await Task.WhenAny(watch, Task.Delay(50));
            }

            // Frozen and killed by the watch: what the job reported last.
            return (await watch)! with { Len = len, Offset = offset };
        }
        finally
        {
            await watching.CancelAsync();
            await ((Task)watch).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    /// <summary>
    /// Every 2 ms until cancelled: once the target holds more than <see cref="StopAllocation"/>, freezes the daemon,
    /// reads its peak memory and kills it; returns that stop (null when cancelled first).
    /// </summary>
    static ScaleRun? WatchAllocation(Daemon daemon, string target, Stopwatch clock, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            if (Allocated(target) > StopAllocation)
            {
                var seconds = clock.Elapsed.TotalSeconds;
                _ = Signal(daemon.Pid, SigStop);
                var peak = daemon.PeakRssMiB();
                _ = Signal(daemon.Pid, SigKill);
                // The kill lands once the system calls in flight (a zero write each) return.
                Thread.Sleep(500);
                return new ScaleRun(false, seconds, 0, 0, Allocated(target), 0, peak);
            }

            Thread.Sleep(2);
        }

        return null;
    }

    const int SigKill = 9;
    const int SigStop = 19;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Signal(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "stat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static unsafe partial int Stat(string path, byte* buffer);

    /// <summary>Bytes the file occupies on disk (st_blocks * 512): stat(2) on x86-64 (st_blocks at byte 64 of its struct stat), else stat(1).</summary>
    static unsafe long Allocated(string path)
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return long.Parse(Runner.Run($"stat -c %b '{path}'").Trim(), CultureInfo.InvariantCulture) * 512;
        }

        var buffer = stackalloc byte[256];
        return Stat(path, buffer) == 0 ? *(long*)(buffer + 64) * 512 : throw new IOException($"stat {path}: errno {Marshal.GetLastPInvokeError()}");
    }
}
