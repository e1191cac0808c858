using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace BlockMirror.Scenarios;

/// <summary>
/// The NBD export: <c>blockmirror serve</c> and <c>qemu-storage-daemon</c> started with the same options
/// (a raw file exported writable on a Unix socket), measured by the same clients: nbdcopy for sequential
/// throughput, fio's nbd engine for 4 KiB random-write latency at depth 1 and 16: flat out (mean), and
/// paced at 32 MiB/s (p99), the rate at which a daemon that batches or sleeps shows its tail. nbdcopy reads
/// the export cold (and its write reads the source cold), so both are also given against the disk's
/// sequential read limit measured in the same pair, with nbdcopy's own CPU time.
/// </summary>
static class NbdScenarios
{
    public static IEnumerable<Row> Export(Options options)
    {
        var size = options.Quick ? 256L << 20 : 1L << 30;
        var source = ImageData.Dense(options.DataDirectory, size);
        var image = Path.Combine(options.DataDirectory, "export.raw");
        var socket = Path.Combine(options.DataDirectory, "nbd.sock");
        var uri = $"nbd+unix:///disk?socket={socket}";
        var runtime = options.Quick ? 5 : 15;
        var metrics = new Dictionary<string, (List<double> Ours, List<double> Theirs, string Unit, string Target)>
        {
            ["nbdcopy read throughput"] = ([], [], "MiB/s", ">= 1.0"),
            ["nbdcopy write throughput"] = ([], [], "MiB/s", ">= 1.0"),
            ["fio 4 KiB randwrite depth 1, mean latency"] = ([], [], "µs", "<= 1.0"),
            ["fio 4 KiB randwrite depth 16, mean latency"] = ([], [], "µs", "<= 1.0"),
            ["fio 4 KiB randwrite depth 1 at 32 MiB/s, p99 latency"] = ([], [], "µs", "<= 1.0"),
            ["fio 4 KiB randwrite depth 16 at 32 MiB/s, p99 latency"] = ([], [], "µs", "<= 1.0"),
        };
        var (readLimit, ourRead, theirRead) = (new List<double>(), new List<double>(), new List<double>());
        var (ourClientCpu, theirClientCpu) = (new List<double>(), new List<double>());
        for (var pair = 0; pair < options.Pairs; pair++)
        {
            var oursFirst = pair % 2 == 1;
            for (var turn = 0; turn < 2; turn++)
            {
                var mine = (turn == 0) == oursFirst;
                Runner.Run($"cp --sparse=never '{source}' '{image}'");
                Runner.DropCaches();
                using var daemon = Start(options, mine, image, socket);
                try
                {
                    var mebibytes = size / (double)(1 << 20);
                    var (readSeconds, readCpu) = TimeClient($"nbdcopy '{uri}' null:");
                    Record(metrics, "nbdcopy read throughput", mine, mebibytes / readSeconds);
                    (mine ? ourRead : theirRead).Add(mebibytes / readSeconds);
                    var (writeSeconds, writeCpu) = TimeClient($"nbdcopy '{source}' '{uri}'");
                    Record(metrics, "nbdcopy write throughput", mine, mebibytes / writeSeconds);
                    (mine ? ourClientCpu : theirClientCpu).Add((readCpu + writeCpu) / 2 / (size / (double)(1L << 30)));
                    foreach (var depth in new[] { 1, 16 })
                    {
                        var flatOut = Fio(uri, depth, size, runtime, rate: null);
                        Record(metrics, $"fio 4 KiB randwrite depth {depth}, mean latency", mine, flatOut.GetProperty("mean").GetDouble() / 1000);
                        var paced = Fio(uri, depth, size, runtime, rate: "32m");
                        Record(metrics, $"fio 4 KiB randwrite depth {depth} at 32 MiB/s, p99 latency", mine,
                            paced.GetProperty("percentile").GetProperty("99.000000").GetDouble() / 1000);
                    }
                }
                finally
                {
                    daemon.Kill(entireProcessTree: true);
                    daemon.WaitForExit();
                    File.Delete(socket);
                }

                Console.Error.WriteLine($"nbd export: pair {pair + 1} turn {turn + 1} done");
            }

            readLimit.Add(SequentialReadLimit(image, size));
            Console.Error.WriteLine($"nbd export: pair {pair + 1}: the disk's sequential read limit {readLimit[^1]:0} MiB/s");
        }

        File.Delete(image);
        var name = $"nbd export {size >> 20} MiB raw";
        foreach (var (metric, (ours, theirs, unit, target)) in metrics)
        {
            yield return new Row(name, metric, ours, theirs, unit, target, "qemu-storage-daemon");
        }

        const string Limit = "the disk's sequential read limit (fio: 4 readers of a quarter each, buffered 256 KiB reads of the export, cold)";
        yield return new Row(name, "blockmirror nbdcopy read vs the disk's sequential read limit", ourRead, readLimit, "MiB/s", null, Limit);
        yield return new Row(name, "qemu-storage-daemon nbdcopy read vs the disk's sequential read limit", theirRead, readLimit, "MiB/s", null, Limit);
        yield return new Row(name, "nbdcopy's own CPU per GiB (mean of read and write)", ourClientCpu, theirClientCpu, "s", null, "qemu-storage-daemon");
    }

    /// <summary>
    /// How fast this disk gives the export's bytes to sequential readers through the page cache, cold (the
    /// daemons' default cache mode), read as nbdcopy reads it: four readers at once, each through its own
    /// quarter (fio, 256 KiB buffered reads, after the page cache is dropped).
    /// </summary>
    static double SequentialReadLimit(string image, long size)
    {
        Runner.DropCaches();
        var quarter = size / 4;
        var json = Runner.Run($"fio --name=seqread --filename='{image}' --rw=read --bs=256k --ioengine=psync --numjobs=4 " +
            $"--size={quarter} --offset_increment={quarter} --group_reporting --output-format=json");
        using var report = JsonDocument.Parse(json[json.IndexOf('{', StringComparison.Ordinal)..]);
        return report.RootElement.GetProperty("jobs")[0].GetProperty("read").GetProperty("bw_bytes").GetDouble() / (1 << 20);
    }

    /// <summary>Runs a client: its wall time (measured here, to the microsecond) and its own CPU time.</summary>
    static (double Seconds, double CpuSeconds) TimeClient(string commandLine)
    {
        var clock = Stopwatch.StartNew();
        var measured = Runner.Measure(commandLine);
        return (clock.Elapsed.TotalSeconds, measured.CpuSeconds);
    }

    /// <summary>Runs fio's nbd engine (4 KiB random writes) and returns its completion-latency object (ns).</summary>
    static JsonElement Fio(string uri, int depth, long size, int runtime, string? rate)
    {
        var json = Runner.Run($"fio --name=lat --ioengine=nbd --uri='{uri}' --rw=randwrite --bs=4k --iodepth={depth} " +
            $"--size={size} --runtime={runtime} --time_based --randseed=1 {(rate is null ? "" : $"--rate={rate} ")}--output-format=json");
        using var report = JsonDocument.Parse(json[json.IndexOf('{', StringComparison.Ordinal)..]);
        return report.RootElement.GetProperty("jobs")[0].GetProperty("write").GetProperty("clat_ns").Clone();
    }

    static void Record(Dictionary<string, (List<double> Ours, List<double> Theirs, string Unit, string Target)> metrics, string metric, bool mine, double value) =>
        (mine ? metrics[metric].Ours : metrics[metric].Theirs).Add(value);

    static Process Start(Options options, bool mine, string image, string socket)
    {
        var start = mine ? options.Start("serve") : new ProcessStartInfo("qemu-storage-daemon") { UseShellExecute = false };
        start.RedirectStandardError = true;

        foreach (var argument in new[]
        {
            "--blockdev", $"driver=file,node-name=file0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk,file=file0",
            "--nbd-server", $"addr.type=unix,addr.path={socket}",
            "--export", "type=nbd,id=exp0,node-name=disk,name=disk,writable=on",
        })
        {
            start.ArgumentList.Add(argument);
        }

        var process = Process.Start(start)!;
        for (var i = 0; i < 400 && !File.Exists(socket); i++)
        {
            Thread.Sleep(25);
        }

        return File.Exists(socket) ? process : throw new InvalidOperationException($"{start.FileName} did not create {socket}: {process.StandardError.ReadToEnd()}");
    }
}
