using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BlockMirror.Scenarios;

/// <summary>
/// The mirror as a qemu-storage-daemon user runs it, over QMP, on both daemons alternately: blockdev-add the
/// target, blockdev-mirror, wait for READY, block-job-complete, wait for COMPLETED. Measures time to READY,
/// the pivot pause (complete to COMPLETED), the daemon's CPU time and peak memory; the live variant keeps
/// an fio writer running on the source's NBD export the whole time.
/// </summary>
static class MirrorScenarios
{
    /// <summary>dense: a raw file of random data mirrored onto a new raw file, O_DIRECT on both sides in both daemons.</summary>
    public static IEnumerable<Row> Dense(Options options)
    {
        var size = options.Quick ? 512L << 20 : 4L << 30;
        var source = ImageData.Dense(options.DataDirectory, size);
        return Run(options, $"dense raw->raw {size >> 20} MiB (QMP)", source, size, writeRate: null);
    }

    /// <summary>live: the dense source exported over NBD and written by fio (random 64 KiB) at a fixed rate during the mirror.</summary>
    public static IEnumerable<Row> Live(Options options)
    {
        var size = options.Quick ? 512L << 20 : 4L << 30;
        var source = ImageData.Dense(options.DataDirectory, size);
        var working = Path.Combine(options.DataDirectory, "live-source.raw");
        foreach (var rate in new[] { "32m", "256m" })
        {
            foreach (var row in Run(options, $"live {size >> 20} MiB, fio 64 KiB randwrite at {rate.ToUpperInvariant()}iB/s", source, size, rate, working))
            {
                yield return row;
            }
        }
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

        return Run(options, $"sparse qcow2->qcow2 {size >> 30} GiB ({data >> 20} MiB data) (QMP)", source, size, writeRate: null, format: "qcow2");
    }

    static IEnumerable<Row> Run(Options options, string name, string source, long size, string? writeRate, string? workingCopy = null, string format = "raw")
    {
        var directory = options.DataDirectory;
        var target = Path.Combine(directory, "mirror-target." + format);
        var converted = new List<double>();
        var convertedOurs = new List<double>();
        var socket = Path.Combine(directory, "nbd.sock");
        var metrics = new Dictionary<string, (List<double> Ours, List<double> Theirs, string Unit, string? Target)>();
        void Record(string metric, bool mine, double value, string unit, string? goal = null)
        {
            if (!metrics.TryGetValue(metric, out var entry))
            {
                entry = ([], [], unit, goal);
                metrics[metric] = entry;
            }

            (mine ? entry.Ours : entry.Theirs).Add(value);
        }

        for (var pair = 0; pair < options.Pairs; pair++)
        {
            for (var turn = 0; turn < 2; turn++)
            {
                var mine = (turn == 0) == (pair % 2 == 1);
                var image = source;
                if (workingCopy is not null)
                {
                    // fio writes to the source: every run starts from the same bytes.
                    Runner.Run($"cp --sparse=never '{source}' '{workingCopy}'");
                    image = workingCopy;
                }

                File.Delete(target);
                Runner.Run($"qemu-img create -q -f {format} '{target}' {size}");
                Runner.DropCaches();
                var arguments = new List<string>
                {
                    "--blockdev", $"driver=file,node-name=src-file,filename={image},cache.direct=on",
                    "--blockdev", $"driver={format},node-name=src,file=src-file",
                };
                if (writeRate is not null)
                {
                    File.Delete(socket);
                    arguments.AddRange(["--nbd-server", $"addr.type=unix,addr.path={socket}", "--export", "type=nbd,id=exp0,node-name=src,name=disk,writable=on"]);
                }

                var result = RunOnceAsync(options, mine, arguments, target, size, format, writeRate, socket).GetAwaiter().GetResult();
                Record("time to READY", mine, result.ToReady, "s", writeRate is null ? "<= 1.0" : null);
                Record("pivot pause (complete -> COMPLETED)", mine, result.PivotPause * 1000, "ms", "<= 0.1");
                Record("daemon CPU per GiB", mine, result.CpuSeconds / (size / (double)(1L << 30)), "s", "<= 1.2");
                Record("daemon peak RSS", mine, result.PeakRssMiB, "MiB", "<= 2.0");
                if (result.Writer is { } writer)
                {
                    Record("converged while writing (1 = yes)", mine, result.ReadyWhileWriting ? 1 : 0, "");
                    Record("writer p50 latency", mine, writer.P50Ms, "ms", "<= 0.5");
                    Record("writer p99 latency", mine, writer.P99Ms, "ms");
                    Record("writer throughput", mine, writer.MiBPerSecond, "MiB/s");
                }

                Console.Error.WriteLine($"{name}: pair {pair + 1} turn {turn + 1} done ({(mine ? "blockmirror" : "qemu-storage-daemon")}: READY {result.ToReady:0.00} s, pause {result.PivotPause * 1000:0.0} ms)");
                if (format == "qcow2" && mine)
                {
                    convertedOurs.Add(result.ToReady + result.PivotPause);
                }
            }

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

        File.Delete(target);
        foreach (var (metric, (ours, theirs, unit, goal)) in metrics)
        {
            yield return new Row(name, metric, ours, theirs, unit, goal, "qemu-storage-daemon");
        }
    }

    sealed record WriterStats(double P50Ms, double P99Ms, double MiBPerSecond);

    sealed record RunResult(double ToReady, double PivotPause, double CpuSeconds, double PeakRssMiB, bool ReadyWhileWriting, WriterStats? Writer);

    static async Task<RunResult> RunOnceAsync(Options options, bool mine, List<string> arguments, string target, long size, string format, string? writeRate, string socket)
    {
        await using var daemon = await Daemon.StartAsync(options, mine, options.DataDirectory, arguments);
        var qmp = daemon.Qmp;
        Process? fio = null;
        var fioOutput = Path.Combine(options.DataDirectory, "fio.json");
        if (writeRate is not null)
        {
            File.Delete(fioOutput);
            var start = new ProcessStartInfo("fio") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in new[]
            {
                "--name=vm", "--ioengine=nbd", $"--uri=nbd+unix:///disk?socket={socket}", "--rw=randwrite", "--bs=64k",
                "--iodepth=4", $"--rate={writeRate}", $"--size={size}", "--time_based", "--runtime=600", "--randseed=3",
                "--output-format=json", $"--output={fioOutput}",
            })
            {
                start.ArgumentList.Add(argument);
            }

            fio = Process.Start(start)!;
            await Task.Delay(1000);
        }

        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "tgt-file", ["filename"] = target, ["cache"] = new JsonObject { ["direct"] = true } });
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = format, ["node-name"] = "tgt", ["file"] = "tgt-file" });
        var clock = Stopwatch.StartNew();
        await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" });
        await qmp.WaitEventAsync("BLOCK_JOB_READY", timeout: TimeSpan.FromMinutes(10));
        var toReady = clock.Elapsed.TotalSeconds;
        var readyWhileWriting = fio is { HasExited: false };
        // A moment in READY (the writer keeps dirtying), then the switch.
        await Task.Delay(1000);
        var pivot = Stopwatch.StartNew();
        await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m" });
        await qmp.WaitEventAsync("BLOCK_JOB_COMPLETED", timeout: TimeSpan.FromMinutes(5));
        var pause = pivot.Elapsed.TotalSeconds;
        var cpu = daemon.CpuSeconds();
        var rss = daemon.PeakRssMiB();
        WriterStats? writer = null;
        if (fio is not null)
        {
            // SIGINT makes fio stop and write its report.
            Runner.Run($"kill -INT {fio.Id}");
            await fio.WaitForExitAsync();
            // fio may print notes before its JSON report.
            var text = await File.ReadAllTextAsync(fioOutput);
            using var report = JsonDocument.Parse(text[text.IndexOf('{', StringComparison.Ordinal)..]);
            var write = report.RootElement.GetProperty("jobs")[0].GetProperty("write");
            var percentiles = write.GetProperty("clat_ns").GetProperty("percentile");
            writer = new WriterStats(
                percentiles.GetProperty("50.000000").GetDouble() / 1e6,
                percentiles.GetProperty("99.000000").GetDouble() / 1e6,
                write.GetProperty("bw_bytes").GetDouble() / (1 << 20));
        }

        return new RunResult(toReady, pause, cpu, rss, readyWhileWriting, writer);
    }
}
