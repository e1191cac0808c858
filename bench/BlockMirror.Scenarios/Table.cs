using System.Globalization;
using System.Text;

namespace BlockMirror.Scenarios;

/// <summary>One measured quantity of a scenario, for both contenders, and its ratio (ours / theirs).</summary>
sealed record Row(string Scenario, string Metric, IReadOnlyList<double> Ours, IReadOnlyList<double> Theirs, string Unit, string? Target = null,
    string Against = "qemu-img convert -W -m 16 + sync")
{
    public static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    /// <summary>NaN when a side has no value (a mode one daemon does not have) or theirs is 0.</summary>
    public double Ratio => Ours.Count == 0 || Theirs.Count == 0 || Median(Theirs) == 0 ? double.NaN : Median(Ours) / Median(Theirs);
}

/// <summary>Markdown rendering of the results.</summary>
static class Table
{
    /// <summary>One table per contender, in the order the rows came.</summary>
    public static string Render(IEnumerable<Row> rows)
    {
        var text = new StringBuilder();
        foreach (var group in rows.GroupBy(r => r.Against))
        {
            text.Append(Render(group, group.Key)).AppendLine();
        }

        return text.ToString();
    }

    static string Render(IEnumerable<Row> rows, string theirsName)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"| scenario | metric | BlockMirror median (min..max) | {theirsName} median (min..max) | ratio ours/theirs | target |");
        text.AppendLine("|---|---|---:|---:|---:|---|");
        foreach (var row in rows)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {row.Scenario} | {row.Metric} | {Cell(row.Ours, row.Unit)} | {Cell(row.Theirs, row.Unit)} | {row.Ratio:0.00} | {row.Target ?? ""} |");
        }

        return text.ToString();
    }

    static string Cell(IReadOnlyList<double> values, string unit) => values.Count == 0 ? "–" :
        string.Create(CultureInfo.InvariantCulture, $"{Row.Median(values):0.###} {unit} ({values.Min():0.###}..{values.Max():0.###})");
}
