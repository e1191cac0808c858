using System.Globalization;
using System.Text;

namespace BlockMirror.Cli.Tools;

/// <summary>
/// A JSON object printed the way qemu-img prints its QAPI results (<c>info</c>, <c>check</c>), so that a
/// script diffing the output of the two tools sees the same text: QEMU's QDict keeps its keys in a hash
/// table of 512 buckets and prints them bucket by bucket, which gives the odd but fixed key order of
/// <c>qemu-img info --output=json</c> ("virtual-size", "filename", "cluster-size", ...).
/// </summary>
/// <remarks>
/// Values are <see cref="long"/>, <see cref="bool"/>, <see cref="string"/>, a nested <see cref="QemuJson"/>, or a
/// list of objects or of strings.
/// Add keys in the order QEMU's QAPI schema lists them: within one bucket the key added last comes first.
/// </remarks>
sealed class QemuJson
{
    /// <summary>QDICT_BUCKET_MAX in qobject/qdict.c.</summary>
    const int Buckets = 512;

    readonly List<(string Key, object Value)> _entries = [];

    public QemuJson Add(string key, object value)
    {
        _entries.RemoveAll(e => e.Key == key);
        _entries.Add((key, value));
        return this;
    }

    /// <summary>Adds the key only when <paramref name="value"/> is not zero, as QAPI's optional members filled with <c>has_x = x != 0</c>.</summary>
    public QemuJson AddNonZero(string key, long value) => value == 0 ? this : Add(key, value);

    /// <summary>The pretty form (<c>qobject_to_json_pretty</c>), without a trailing newline.</summary>
    public string ToPrettyString()
    {
        var text = new StringBuilder();
        Write(text, 0);
        return text.ToString();
    }

    /// <summary>A JSON array of objects as qemu-img prints <c>--backing-chain</c>, without a trailing newline.</summary>
    public static string ToPrettyArray(IReadOnlyList<QemuJson> items)
    {
        var text = new StringBuilder();
        WriteArray(text, items, 0);
        return text.ToString();
    }

    /// <summary>An array; an empty one as QEMU's pretty printer writes it, its brackets on two lines.</summary>
    static void WriteArray<T>(StringBuilder text, IReadOnlyList<T> items, int level, Action<StringBuilder, T, int> write)
    {
        text.Append('[');
        for (var i = 0; i < items.Count; i++)
        {
            text.Append(i == 0 ? "\n" : ",\n");
            Indent(text, level + 1);
            write(text, items[i], level + 1);
        }

        text.Append('\n');
        Indent(text, level);
        text.Append(']');
    }

    static void WriteArray(StringBuilder text, IReadOnlyList<QemuJson> items, int level) =>
        WriteArray(text, items, level, static (t, item, l) => item.Write(t, l));

    void Write(StringBuilder text, int level)
    {
        if (_entries.Count == 0)
        {
            text.Append("{}");
            return;
        }

        text.Append('{');
        var first = true;
        foreach (var (key, value) in Ordered())
        {
            text.Append(first ? "\n" : ",\n");
            first = false;
            Indent(text, level + 1);
            AppendString(text, key);
            text.Append(": ");
            switch (value)
            {
                case QemuJson nested:
                    nested.Write(text, level + 1);
                    break;
                case IReadOnlyList<QemuJson> list:
                    WriteArray(text, list, level + 1);
                    break;
                case IReadOnlyList<string> strings:
                    WriteArray(text, strings, level + 1, static (t, item, _) => AppendString(t, item));
                    break;
                case bool b:
                    text.Append(b ? "true" : "false");
                    break;
                case long n:
                    text.Append(n.ToString(CultureInfo.InvariantCulture));
                    break;
                case int n:
                    text.Append(n.ToString(CultureInfo.InvariantCulture));
                    break;
                case string s:
                    AppendString(text, s);
                    break;
                default:
                    throw new InvalidOperationException($"QemuJson: unsupported value type {value.GetType()} for '{key}'");
            }
        }

        text.Append('\n');
        Indent(text, level);
        text.Append('}');
    }

    /// <summary>Bucket by bucket; inside a bucket the newest key first (QLIST_INSERT_HEAD).</summary>
    IEnumerable<(string Key, object Value)> Ordered() =>
        _entries.Select((entry, index) => (entry, index))
            .OrderBy(e => Bucket(e.entry.Key))
            .ThenByDescending(e => e.index)
            .Select(e => e.entry);

    /// <summary>qdict.c's tdb_hash, modulo the bucket count.</summary>
    internal static int Bucket(string key)
    {
        var bytes = Encoding.UTF8.GetBytes(key);
        var value = unchecked(0x238F13AFu * (uint)bytes.Length);
        for (var i = 0; i < bytes.Length; i++)
        {
            value = unchecked(value + ((uint)bytes[i] << (i * 5 % 24)));
        }

        return (int)(unchecked((1103515243u * value) + 12345u) % Buckets);
    }

    static void Indent(StringBuilder text, int level) => text.Append(' ', level * 4);

    /// <summary>
    /// A JSON string as QEMU writes one: the usual short escapes, and every other character outside
    /// printable ASCII as <c>\uXXXX</c> with upper-case hex (a UTF-16 surrogate pair above U+FFFF).
    /// </summary>
    public static void AppendString(StringBuilder text, string value)
    {
        text.Append('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"':
                    text.Append("\\\"");
                    break;
                case '\\':
                    text.Append("\\\\");
                    break;
                case '\b':
                    text.Append("\\b");
                    break;
                case '\f':
                    text.Append("\\f");
                    break;
                case '\n':
                    text.Append("\\n");
                    break;
                case '\r':
                    text.Append("\\r");
                    break;
                case '\t':
                    text.Append("\\t");
                    break;
                default:
                    if (c < 0x20 || c >= 0x7f)
                    {
                        text.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:X4}");
                    }
                    else
                    {
                        text.Append(c);
                    }

                    break;
            }
        }

        text.Append('"');
    }
}
