namespace BlockMirror.Scenarios;

/// <summary>
/// Values collected run by run for (scenario, metric), ours and theirs apart, turned into rows in the order
/// they were first recorded. A side with no value (a mode one daemon refused) shows as a dash.
/// </summary>
sealed class MetricTable(string against)
{
    readonly List<(string Scenario, string Metric)> _order = [];
    readonly Dictionary<(string Scenario, string Metric), (List<double> Ours, List<double> Theirs, string Unit, string? Target)> _values = [];

    public void Add(string scenario, string metric, bool ours, double value, string unit, string? target = null)
    {
        if (!_values.TryGetValue((scenario, metric), out var entry))
        {
            entry = ([], [], unit, target);
            _values[(scenario, metric)] = entry;
            _order.Add((scenario, metric));
        }

        (ours ? entry.Ours : entry.Theirs).Add(value);
    }

    public IEnumerable<Row> Rows()
    {
        foreach (var key in _order)
        {
            var (ours, theirs, unit, target) = _values[key];
            yield return new Row(key.Scenario, key.Metric, ours, theirs, unit, target, against);
        }
    }
}
