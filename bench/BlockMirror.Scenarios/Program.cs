using System.Diagnostics;
using System.Globalization;
using System.Text;
using BlockMirror.TestKit;

namespace BlockMirror.Scenarios;

/// <summary>
/// Scenario benchmarks: BlockMirror and QEMU's tools on the same images, in the same run, alternating
/// (ABAB) with a cold page cache before every run; prints a markdown table of medians and ratios.
/// </summary>
static class Program
{
    static int Main(string[] args)
    {
        if (args is ["--help"] or ["-h"])
        {
            Console.WriteLine(Options.Usage);
            return 0;
        }

        Options options;
        try
        {
            options = Options.Parse(args);
        }
        catch (Exception e) when (e is ArgumentException or FormatException or OverflowException)
        {
            Console.Error.WriteLine($"blockmirror-scenarios: {e.Message}");
            Console.Error.WriteLine(Options.Usage);
            return 2;
        }

        Directory.CreateDirectory(options.DataDirectory);
        var cold = Runner.DropCaches();
        var rows = new List<Row>();
        foreach (var scenario in options.Scenarios)
        {
            rows.AddRange(scenario switch
            {
                "dense" => FileScenarios.Dense(options),
                "sparse" => FileScenarios.Sparse(options),
                "qcow2" => ImageLayerScenarios.Qcow2(options),
                "nbd" => NbdScenarios.Export(options),
                "mirror" => MirrorScenarios.Dense(options),
                "live" => LiveScenarios.Live(options),
                "sparse-qmp" => MirrorScenarios.Sparse(options),
                "nbd-mirror" => NbdMirrorScenarios.Mirror(options),
                "sparse-scale" => ScaleScenarios.SparseScale(options),
                _ => throw new UnreachableException($"scenario '{scenario}' passed Options.Parse but has no case here"),
            });
        }

        var report = new StringBuilder();
        report.AppendLine(CultureInfo.InvariantCulture, $"Date: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; machine: {Environment.ProcessorCount} cores, {Runner.Run("free -g | awk '/Mem:/ {print $2}'").Trim()} GiB; {Runner.Run("qemu-img --version | head -1").Trim()}; .NET {Environment.Version}");
        report.AppendLine(CultureInfo.InvariantCulture, $"Command: `{options.CommandLine}`; {options.Pairs} pair(s), alternating, page cache {(cold ? "dropped before every run" : "NOT dropped (no permission): warm runs")}.");
        report.AppendLine();
        report.Append(Table.Render(rows));
        Console.WriteLine(report);
        if (options.Output is { } output)
        {
            File.WriteAllText(output, report.ToString());
            Chart.Write(rows, Path.ChangeExtension(output, ".png"));
        }

        return 0;
    }
}

/// <summary>Command-line options of the scenario runner.</summary>
sealed record Options(string DataDirectory, int Pairs, bool Quick, IReadOnlyList<string> Scenarios, string BlockMirror, string? Output, string CommandLine,
    IReadOnlyList<string> CopyModes, IReadOnlyList<string> Rates)
{
    public const string Usage = """
        usage: blockmirror-scenarios [--scenarios LIST] [--pairs N | --quick] [--data-dir DIR] [--blockmirror PATH]
                                     [--output FILE.md] [--copy-modes LIST] [--rates LIST]
          --scenarios   comma-separated: dense, sparse, mirror, live, sparse-qmp, qcow2, nbd, nbd-mirror,
                        sparse-scale (not run by default: 4 TiB and 1 TiB sparse images)
          --pairs       runs of each side, alternating (default 3); --quick: one pair, smaller images
          --data-dir    where the images go (default /var/tmp/blockmirror-bench)
          --blockmirror the blockmirror to run: a native executable or blockmirror.dll
          --output      also write the report there, and a chart beside it (.png)
          --copy-modes  the live scenario's: background, write-blocking, adaptive
          --rates       the live scenario's writer rates: fio's rate (32m, 256m) or max
        """;

    /// <summary>The scenarios Program.Main runs, by name.</summary>
    static readonly string[] Names = ["dense", "sparse", "mirror", "live", "sparse-qmp", "qcow2", "nbd", "nbd-mirror", "sparse-scale"];

    public static Options Parse(string[] args)
    {
        var data = "/var/tmp/blockmirror-bench";
        var pairs = 3;
        var quick = false;
        string[] scenarios = ["mirror", "sparse-qmp", "live", "dense", "sparse", "nbd", "qcow2"];
        var blockMirror = Path.Combine(AppContext.BaseDirectory, "blockmirror.dll");
        string? output = null;
        string[] copyModes = ["background", "write-blocking", "adaptive"];
        string[] rates = ["32m", "256m", "max"];
        var i = 0;
        for (; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--data-dir": data = Value(); break;
                case "--pairs": pairs = int.Parse(Value(), CultureInfo.InvariantCulture); break;
                case "--quick": quick = true; pairs = 1; break;
                case "--scenarios": scenarios = Known(Value().Split(','), "scenario", Names); break;
                case "--blockmirror": blockMirror = Value(); break;
                case "--output": output = Value(); break;
                case "--copy-modes": copyModes = Known(Value().Split(','), "copy mode", "background", "write-blocking", "adaptive"); break;
                case "--rates": rates = Value().Split(','); break;
                default: throw new ArgumentException($"unknown option '{args[i]}' (known: --data-dir, --pairs, --quick, --scenarios, --blockmirror, --output, --copy-modes, --rates)");
            }
        }

        return new Options(data, pairs, quick, scenarios, blockMirror, output, "blockmirror-scenarios " + string.Join(' ', args), copyModes, rates);

        string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"option '{args[i]}' needs a value");
    }

    static string[] Known(string[] values, string what, params string[] known) =>
        values.FirstOrDefault(v => !known.Contains(v)) is { } unknown
            ? throw new ArgumentException($"unknown {what} '{unknown}' (known: {string.Join(", ", known)})")
            : values;

    /// <summary>A shell command line running <c>blockmirror</c> with <paramref name="arguments"/> (already quoted).</summary>
    public string Shell(string arguments) => string.Join(' ', BlockMirrorLauncher.Launcher(BlockMirror).Select(part => $"'{part}'")) + " " + arguments;

    /// <summary>A start description for <c>blockmirror</c> with <paramref name="arguments"/>; output not redirected.</summary>
    public ProcessStartInfo Start(params IEnumerable<string> arguments) => BlockMirrorLauncher.StartInfo(BlockMirror, arguments);
}
