namespace BlockMirror.Scenarios;

/// <summary>
/// Image-file scenarios: `blockmirror mirror` (copy until READY, then complete, which flushes) against
/// `qemu-img convert -W -m 16` followed by `sync` (so both end with the data on disk).
/// </summary>
static class FileScenarios
{
    public static IEnumerable<Row> Dense(Options options)
    {
        var size = options.Quick ? 512L << 20 : 4L << 30;
        var source = ImageData.Dense(options.DataDirectory, size);
        return Compare(options, "dense raw->raw " + Gib(size), source, size);
    }

    public static IEnumerable<Row> Sparse(Options options)
    {
        var (size, data) = options.Quick ? (4L << 30, 256L << 20) : (32L << 30, 2L << 30);
        var source = ImageData.Sparse(options.DataDirectory, size, data);
        return Compare(options, $"sparse raw->raw {Gib(size)} ({Gib(data)} data)", source, data);
    }

    static string Gib(long bytes) => bytes >= 1L << 30 ? $"{bytes >> 30} GiB" : $"{bytes >> 20} MiB";

    static IEnumerable<Row> Compare(Options options, string name, string source, long dataBytes)
    {
        var target = Path.Combine(options.DataDirectory, "target.raw");
        var ours = new List<Measurement>();
        var theirs = new List<Measurement>();
        for (var pair = 0; pair < options.Pairs; pair++)
        {
            // Alternate who goes first, so neither always meets the other's leftovers.
            var oursFirst = pair % 2 == 1;
            for (var turn = 0; turn < 2; turn++)
            {
                File.Delete(target);
                Runner.DropCaches();
                if ((turn == 0) == oursFirst)
                {
                    ours.Add(Runner.Measure(options.Shell($"mirror '{source}' '{target}' > /dev/null && sync")));
                }
                else
                {
                    theirs.Add(Runner.Measure($"qemu-img convert -W -m 16 -f raw -O raw '{source}' '{target}' && sync"));
                }

                Console.Error.WriteLine($"{name}: pair {pair + 1} turn {turn + 1} done");
            }
        }

        File.Delete(target);
        var gib = dataBytes / (double)(1L << 30);
        yield return new Row(name, "elapsed", [.. ours.Select(m => m.Seconds)], [.. theirs.Select(m => m.Seconds)], "s", "<= 1.0");
        yield return new Row(name, "CPU per GiB of data", [.. ours.Select(m => m.CpuSeconds / gib)], [.. theirs.Select(m => m.CpuSeconds / gib)], "s");
        yield return new Row(name, "peak RSS", [.. ours.Select(m => m.PeakRssKiB / 1024.0)], [.. theirs.Select(m => m.PeakRssKiB / 1024.0)], "MiB", "< 64 MiB");
    }
}
