using System.Diagnostics;
using System.Globalization;

namespace BlockMirror.Scenarios;

/// <summary>What the writer saw in a window of time: completion latency percentiles and throughput.</summary>
sealed record WriterStats(double P50Ms, double P99Ms, double MiBPerSecond);

/// <summary>
/// The guest: fio writing random 64 KiB blocks (iodepth 4) through an NBD export, at a fixed rate or flat out,
/// logging every write's completion latency with a Unix timestamp, so that a window (the copy, from
/// blockdev-mirror to READY) can be cut out of the run afterwards.
/// </summary>
sealed class FioWriter
{
    readonly Process _process;
    readonly string _logPrefix;

    FioWriter(Process process, string logPrefix)
    {
        _process = process;
        _logPrefix = logPrefix;
    }

    public bool HasExited => _process.HasExited;

    /// <summary>Starts fio on the export at <paramref name="socket"/>; <paramref name="rate"/> null writes flat out.</summary>
    public static FioWriter Start(string directory, string socket, long size, string? rate)
    {
        var prefix = Path.Combine(directory, "fio");
        foreach (var old in Directory.GetFiles(directory, "fio_*.log"))
        {
            File.Delete(old);
        }

        var start = new ProcessStartInfo("fio") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in new[]
        {
            "--name=vm", "--ioengine=nbd", $"--uri=nbd+unix:///disk?socket={socket}", "--rw=randwrite", "--bs=64k",
            "--iodepth=4", $"--size={size}", "--time_based", "--runtime=600", "--randseed=3",
            // Every write logged (no averaging), stamped with the wall clock the scenario's times are in.
            $"--write_lat_log={prefix}", "--log_unix_epoch=1", $"--output={prefix}.json",
        })
        {
            start.ArgumentList.Add(argument);
        }

        if (rate is not null)
        {
            start.ArgumentList.Add($"--rate={rate}");
        }

        return new FioWriter(Process.Start(start)!, prefix);
    }

    /// <summary>Stops fio (SIGINT: it stops and writes its logs) and waits for it.</summary>
    public async Task StopAsync()
    {
        Runner.Run($"kill -INT {_process.Id}");
        await _process.WaitForExitAsync();
    }

    /// <summary>The writes that completed between <paramref name="from"/> and <paramref name="to"/> (after <see cref="StopAsync"/>).</summary>
    public WriterStats Window(DateTime from, DateTime to)
    {
        var first = new DateTimeOffset(from).ToUnixTimeMilliseconds();
        var last = new DateTimeOffset(to).ToUnixTimeMilliseconds();
        var latencies = new List<long>();
        long bytes = 0;
        // Lines: time (ms), completion latency (ns), direction (1 = write), block size, offset, priority.
        foreach (var line in File.ReadLines($"{_logPrefix}_clat.1.log"))
        {
            var fields = line.Split(',', StringSplitOptions.TrimEntries);
            var time = long.Parse(fields[0], CultureInfo.InvariantCulture);
            if (time < first || time > last || fields[2] != "1")
            {
                continue;
            }

            latencies.Add(long.Parse(fields[1], CultureInfo.InvariantCulture));
            bytes += long.Parse(fields[3], CultureInfo.InvariantCulture);
        }

        if (latencies.Count == 0)
        {
            return new WriterStats(double.NaN, double.NaN, 0);
        }

        latencies.Sort();
        double Percentile(double p) => latencies[(int)Math.Min(latencies.Count - 1, Math.Floor(p * latencies.Count))] / 1e6;
        return new WriterStats(Percentile(0.50), Percentile(0.99), bytes / (double)(1 << 20) / ((last - first) / 1000.0));
    }
}
