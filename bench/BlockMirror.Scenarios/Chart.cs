using System.Globalization;
using System.Text;

namespace BlockMirror.Scenarios;

/// <summary>
/// The ratios as a bar chart (PNG, drawn by gnuplot, which bench/run installs): one bar per row, green
/// where the row's target is met, red where it is not, grey without a target; a dashed line at 1.0.
/// </summary>
static class Chart
{
    public static void Write(IReadOnlyList<Row> all, string path)
    {
        // A row with one side missing (a mode only one daemon has run) has no ratio to draw.
        var rows = all.Where(r => !double.IsNaN(r.Ratio)).ToList();
        if (!Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(d => File.Exists(Path.Combine(d, "gnuplot"))))
        {
            Console.Error.WriteLine("gnuplot not found: no chart (apt-get install gnuplot-nox)");
            return;
        }

        var data = new StringBuilder();
        for (var i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            var color = Met(row) switch { true => "0x2ca02c", false => "0xd62728", null => "0x7f7f7f" };
            var label = $"{row.Scenario}: {row.Metric}".Replace("\"", "'", StringComparison.Ordinal);
            data.AppendLine(CultureInfo.InvariantCulture, $"{i} \"{label}\" {row.Ratio:0.####} {color}");
        }

        var dataPath = Path.ChangeExtension(path, ".dat");
        File.WriteAllText(dataPath, data.ToString());
        var script = $"""
            set terminal png size 1600,{600 + 18 * rows.Count}
            set output '{path}'
            set title "BlockMirror / QEMU, same machine, same run (median ratios; green: target met, red: missed)"
            set style fill solid 0.8
            set boxwidth 0.8
            set xtics rotate by -60 font ",8" nomirror
            set ylabel "ours / theirs (log scale)"
            set logscale y
            set yrange [0.05:*]
            set grid ytics
            set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2
            set bmargin 30
            plot '{dataPath}' using 1:3:4:xticlabels(2) with boxes lc rgb variable notitle
            """;
        var scriptPath = Path.ChangeExtension(path, ".gp");
        File.WriteAllText(scriptPath, script);
        Runner.Run($"gnuplot '{scriptPath}'");
        Console.Error.WriteLine($"chart: {path}");
    }

    /// <summary>Whether the median ratio meets a target written as "&lt;= x" or "&gt;= x"; null when there is none.</summary>
    static bool? Met(Row row)
    {
        var target = row.Target?.Trim();
        if (target is null || target.Length < 3 || double.IsNaN(row.Ratio))
        {
            return null;
        }

        var number = new string([.. target[2..].TrimStart().TakeWhile(c => char.IsDigit(c) || c == '.')]);
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var limit) || target.Contains("MiB", StringComparison.Ordinal))
        {
            return null;
        }

        return target[..2] switch
        {
            "<=" => row.Ratio <= limit,
            ">=" => row.Ratio >= limit,
            _ => null,
        };
    }
}
