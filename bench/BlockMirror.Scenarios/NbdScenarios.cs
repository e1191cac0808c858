using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace BlockMirror.Scenarios;

/// <summary>
/// The NBD export: <c>blockmirror serve</c> and <c>qemu-storage-daemon</c> started with the same options
/// (a raw file exported writable on a Unix socket), measured by the same clients: nbdcopy for sequential
/// throughput, fio's nbd engine for 4 KiB random-write latency at depth 1 and 16: flat out (mean), and
/// paced at 32 MiB/s (p99), the rate at which a daemon that batches or sleeps shows its tail.
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
                    Record(metrics, "nbdcopy read throughput", mine, size / (double)(1 << 20) / Time(() => Runner.Run($"nbdcopy '{uri}' null:")));
                    Record(metrics, "nbdcopy write throughput", mine, size / (double)(1 << 20) / Time(() => Runner.Run($"nbdcopy '{source}' '{uri}'")));
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
        }

        File.Delete(image);
        foreach (var (metric, (ours, theirs, unit, target)) in metrics)
        {
            yield return new Row($"nbd export {size >> 20} MiB raw", metric, ours, theirs, unit, target, "qemu-storage-daemon");
        }
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

    static double Time(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        return clock.Elapsed.TotalSeconds;
    }

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
