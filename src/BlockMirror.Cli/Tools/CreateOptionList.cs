namespace BlockMirror.Cli.Tools;

/// <summary>
/// qemu-img's <c>-o</c> option lists: <c>key=value</c> pairs separated by commas, a doubled comma standing
/// for a comma inside a value, a bare key meaning <c>key=on</c>. Several <c>-o</c> are joined; a later value
/// for a key replaces an earlier one.
/// </summary>
static class CreateOptionList
{
    /// <summary>Parses every <c>-o</c> argument, in order, into one list of (key, value).</summary>
    public static List<KeyValuePair<string, string>> Parse(IEnumerable<string> lists)
    {
        var result = new List<KeyValuePair<string, string>>();
        foreach (var list in lists)
        {
            foreach (var item in Split(list))
            {
                if (item.Length == 0)
                {
                    continue;
                }

                var equals = item.IndexOf('=', StringComparison.Ordinal);
                var (key, value) = equals < 0 ? (item, "on") : (item[..equals], item[(equals + 1)..]);
                if (key.Length == 0)
                {
                    throw new Commands.UsageException($"Invalid option list '{list}': a parameter has no name");
                }

                Set(result, key, value);
            }
        }

        return result;
    }

    /// <summary>Sets or replaces a key, keeping the place of its first appearance.</summary>
    public static void Set(List<KeyValuePair<string, string>> options, string key, string value)
    {
        var index = options.FindIndex(o => o.Key == key);
        if (index >= 0)
        {
            options[index] = new(key, value);
        }
        else
        {
            options.Add(new(key, value));
        }
    }

    /// <summary>Splits on single commas; ",," is a literal comma.</summary>
    static IEnumerable<string> Split(string list)
    {
        var current = new System.Text.StringBuilder();
        for (var i = 0; i < list.Length; i++)
        {
            if (list[i] != ',')
            {
                current.Append(list[i]);
            }
            else if (i + 1 < list.Length && list[i + 1] == ',')
            {
                current.Append(',');
                i++;
            }
            else
            {
                yield return current.ToString();
                current.Clear();
            }
        }

        yield return current.ToString();
    }
}
