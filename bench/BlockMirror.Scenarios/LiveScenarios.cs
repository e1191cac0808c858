namespace BlockMirror.Scenarios;

/// <summary>
/// live: the dense source exported over NBD and written by fio (random 64 KiB, iodepth 4) at each rate of
/// <c>--rates</c> (a rate, or <c>max</c>: flat out) during the whole mirror, in each copy mode of
/// <c>--copy-modes</c>: <c>background</c> and <c>write-blocking</c> on both daemons, and <c>adaptive</c> (ours
/// only, QMP's <c>__org.blockmirror_adaptive</c>), measured against qemu-storage-daemon's write-blocking runs
/// of the same pairs. Writer figures cover the copy alone: the writes that completed between blockdev-mirror
/// and READY.
/// </summary>
static class LiveScenarios
{
    const string Adaptive = "adaptive";

    public static IEnumerable<Row> Live(Options options)
    {
        var size = options.Quick ? 512L << 20 : 4L << 30;
        var source = ImageData.Dense(options.DataDirectory, size);
        foreach (var rate in options.Rates)
        {
            foreach (var row in AtRate(options, source, size, rate == "max" ? null : rate))
            {
                yield return row;
            }
        }
    }

    static IEnumerable<Row> AtRate(Options options, string source, long size, string? rate)
    {
        var directory = options.DataDirectory;
        var working = Path.Combine(directory, "live-source.raw");
        var target = Path.Combine(directory, "mirror-target.raw");
        var socket = Path.Combine(directory, "nbd.sock");
        // Long enough for every mode that keeps up with the writer; a background mirror that falls behind is cut
        // here and counted as not converged.
        var convergeWithin = TimeSpan.FromSeconds(options.Quick ? 30 : 90);
        var writing = rate is null ? "flat out" : $"at {rate.ToUpperInvariant()}iB/s";
        var contenders = options.CopyModes
            .SelectMany(mode => mode == Adaptive ? [(Ours: true, Mode: mode)] : new[] { (Ours: true, Mode: mode), (Ours: false, Mode: mode) })
            .ToList();
        var refused = new HashSet<(bool, string)>();
        var metrics = new MetricTable("qemu-storage-daemon");
        for (var pair = 0; pair < options.Pairs; pair++)
        {
            // ABAB..., then BABA...: neither daemon nor mode always runs first.
            foreach (var (ours, mode) in pair % 2 == 0 ? contenders : Enumerable.Reverse(contenders))
            {
                if (refused.Contains((ours, mode)))
                {
                    continue;
                }

                // fio writes to the source: every run starts from the same bytes.
                Runner.Run($"cp --sparse=never '{source}' '{working}'");
                MirrorScenarios.PrepareTarget(target, "raw", size);
                var run = RunOnceAsync(options, ours, mode, working, target, socket, size, rate, convergeWithin).GetAwaiter().GetResult();
                var who = ours ? "blockmirror" : "qemu-storage-daemon";
                if (run is null)
                {
                    refused.Add((ours, mode));
                    continue;
                }

                // QEMU has no adaptive mode: ours is held against its write-blocking runs.
                var scenarios = new List<string>();
                if (mode != Adaptive)
                {
                    scenarios.Add($"live {size >> 20} MiB, fio 64 KiB randwrite {writing}, {mode}");
                }

                if (mode == Adaptive || (!ours && mode == "write-blocking" && options.CopyModes.Contains(Adaptive)))
                {
                    scenarios.Add($"live {size >> 20} MiB, fio 64 KiB randwrite {writing}, ours adaptive, QEMU write-blocking");
                }

                var activeFlatOut = rate is null && mode != "background";
                foreach (var scenario in scenarios)
                {
                    metrics.Add(scenario, "converged while writing (1 = yes)", ours, run.Converged ? 1 : 0, "", "1 every run");
                    if (run.ToReady is { } toReady)
                    {
                        metrics.Add(scenario, "time to READY", ours, toReady, "s");
                    }

                    if (run.PivotPauseMs is { } pause)
                    {
                        metrics.Add(scenario, "pivot pause (complete -> COMPLETED)", ours, pause, "ms", "<= 10 ms every run");
                    }

                    metrics.Add(scenario, "writer throughput during the copy", ours, run.Writer.MiBPerSecond, "MiB/s", activeFlatOut ? ">= 1.25" : null);
                    metrics.Add(scenario, "writer p50 latency during the copy", ours, run.Writer.P50Ms, "ms", "<= 0.5");
                    metrics.Add(scenario, "writer p99 latency during the copy", ours, run.Writer.P99Ms, "ms");
                    metrics.Add(scenario, "daemon peak RSS", ours, run.PeakRssMiB, "MiB", rate == "256m" ? "<= 1.5" : null);
                    metrics.Add(scenario, "daemon CPU per GiB", ours, run.CpuSeconds / (size / (double)(1L << 30)), "s");
                }

                Console.Error.WriteLine($"live {writing}, {mode}: pair {pair + 1} {who}: " +
                    $"{(run.Converged ? $"READY {run.ToReady:0.00} s, pause {run.PivotPauseMs:0.0} ms" : "did not converge")}, " +
                    $"writer {run.Writer.MiBPerSecond:0} MiB/s p50 {run.Writer.P50Ms:0.000} ms p99 {run.Writer.P99Ms:0.000} ms, peak RSS {run.PeakRssMiB:0.0} MiB");
            }
        }

        File.Delete(target);
        File.Delete(working);
        return metrics.Rows().ToList();
    }

    sealed record LiveRun(bool Converged, double? ToReady, double? PivotPauseMs, WriterStats Writer, double CpuSeconds, double PeakRssMiB);

    /// <summary>One mirror under the writer; null when the daemon refused the copy mode (said on stderr).</summary>
    static async Task<LiveRun?> RunOnceAsync(Options options, bool ours, string mode, string image, string target, string socket, long size, string? rate, TimeSpan convergeWithin)
    {
        await using var daemon = await Daemon.StartAsync(options, ours, options.DataDirectory, MirrorScenarios.SourceArguments(image, "raw", socket));
        var writer = FioWriter.Start(options.DataDirectory, socket, size, rate);
        try
        {
            // The writer at its pace before the copy starts.
            await Task.Delay(1000);
            var copyMode = mode == Adaptive ? "__org.blockmirror_adaptive" : mode;
            var times = await MirrorScenarios.MirrorOnceAsync(daemon.Qmp, target, "raw", copyMode, convergeWithin);
            if (times.Refused is { } refused)
            {
                Console.Error.WriteLine($"{daemon.Name} refused copy-mode {copyMode}: {refused}");
                return null;
            }

            var cpu = daemon.CpuSeconds();
            var rss = daemon.PeakRssMiB();
            if (writer.HasExited)
            {
                throw new InvalidOperationException($"fio stopped before the end of the run on {daemon.Name}");
            }

            await writer.StopAsync();
            var stats = writer.Window(times.Started, times.Ready ?? times.Started + convergeWithin);
            return new LiveRun(times.Ready is not null, (times.Ready - times.Started)?.TotalSeconds, times.PivotPause * 1000, stats, cpu, rss);
        }
        finally
        {
            if (!writer.HasExited)
            {
                await writer.StopAsync();
            }
        }
    }
}
