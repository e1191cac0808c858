using System.Globalization;
using System.Text.RegularExpressions;

namespace BlockMirror.Scenarios;

/// <summary>
/// The image layer alone: `blockmirror bench` against `qemu-img bench` with the same arguments on the same
/// kind of file (a new qcow2 made by qemu-img for every write run), O_DIRECT on and off. Both tools report
/// the time of their request loop only ("Run completed in X seconds"), without start-up and close; the row
/// is the throughput that gives.
/// </summary>
static partial class ImageLayerScenarios
{
    /// <summary>Requests in flight: a busy VM's queue, and what both tools are given.</summary>
    const int Depth = 16;

    sealed record Case(string Name, bool Write, int BufferSize, long Step, long Count);

    public static IEnumerable<Row> Qcow2(Options options)
    {
        var size = options.Quick ? 256L << 20 : 1L << 30;
        var scale = options.Quick ? 4 : 1;
        // Steps of an odd number of blocks visit every block of a power-of-two image once, scattered: the
        // "random" pattern both tools can issue identically. The strides cross an L2 table each time.
        Case[] cases =
        [
            new("random 4 KiB writes", true, 4 << 10, 4099L * (4 << 10), 50_000 / scale),
            new("random 64 KiB writes", true, 64 << 10, 257L * (64 << 10), size / (64 << 10)),
            new("sequential 1 MiB writes", true, 1 << 20, 1 << 20, size / (1 << 20)),
            new("sequential 1 MiB reads", false, 1 << 20, 1 << 20, size / (1 << 20)),
        ];
        var image = Path.Combine(options.DataDirectory, "bench.qcow2");

        // A run lasts about a second, and on the VM's disk one run differs from the next by up to ±40 %
        // (qemu-img's own sequential 1 MiB O_DIRECT writes: 730 to 1240 MiB/s within one table): twice the
        // pairs of the longer scenarios, for steadier medians at the cost of a few minutes.
        var pairs = options.Pairs * 2;
        foreach (var cache in new[] { "none", "writeback" })
        {
            foreach (var c in cases)
            {
                var name = $"qcow2 {Gib(size)}, {c.Name}, cache={cache}";
                var ours = new List<double>();
                var theirs = new List<double>();
                if (!c.Write)
                {
                    // Reads need data: one image, written once by qemu-img, read by both.
                    Fresh(image, size);
                    Runner.Run($"qemu-img bench -w -c {size / (1 << 20)} -d {Depth} -s 1M -t none -f qcow2 '{image}'");
                }

                for (var pair = 0; pair < pairs; pair++)
                {
                    var oursFirst = pair % 2 == 1;
                    for (var turn = 0; turn < 2; turn++)
                    {
                        if (c.Write)
                        {
                            Fresh(image, size);
                        }

                        Runner.DropCaches();
                        var arguments = $"{(c.Write ? "-w " : "")}-c {c.Count} -d {Depth} -s {c.BufferSize} -S {c.Step} -t {cache} -f qcow2 '{image}'";
                        var mine = (turn == 0) == oursFirst;
                        var output = Runner.Run(mine ? options.Shell($"bench {arguments}") : $"qemu-img bench {arguments}");
                        var mibPerSecond = c.Count * (double)c.BufferSize / (1 << 20) / Seconds(output);
                        (mine ? ours : theirs).Add(mibPerSecond);
                        Console.Error.WriteLine($"{name}: pair {pair + 1} turn {turn + 1} done");
                    }
                }

                yield return new Row(name, "throughput", ours, theirs, "MiB/s", ">= 0.9", "qemu-img bench");
            }
        }

        File.Delete(image);
    }

    static void Fresh(string image, long size)
    {
        File.Delete(image);
        Runner.Run($"qemu-img create -q -f qcow2 '{image}' {size}");
    }

    static double Seconds(string output)
    {
        var match = RunCompleted().Match(output);
        return match.Success
            ? double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture)
            : throw new InvalidOperationException($"no 'Run completed' line in:\n{output}");
    }

    static string Gib(long bytes) => bytes >= 1L << 30 ? $"{bytes >> 30} GiB" : $"{bytes >> 20} MiB";

    [GeneratedRegex(@"Run completed in ([0-9.]+) seconds")]
    private static partial Regex RunCompleted();
}
