using System.Buffers;
using System.Text;
using System.Text.Json;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// QEMU's command-line "keyval" syntax (util/keyval.c), as qemu-storage-daemon's --blockdev, --export and
/// --nbd-server take it: <c>driver=qcow2,node-name=disk,file.driver=file,file.filename=a.qcow2</c>. Dots
/// nest objects, ",," is a literal comma, and every value is a string; <see cref="QmpArguments"/> in keyval
/// mode converts them where the schema wants a number or a boolean. An optional implied first key lets
/// <c>--monitor mon0</c> mean <c>chardev=mon0</c>.
/// </summary>
public static class KeyVal
{
    /// <summary>Parses <paramref name="text"/> into a JSON object of strings and nested objects.</summary>
    public static JsonElement Parse(string text, string? impliedKey = null)
    {
        var order = new List<(string Key, string Value)>();
        var position = 0;
        var first = true;
        while (position < text.Length)
        {
            var key = ReadUntil(text, ref position, stopAtEquals: true, out var sawEquals);
            string value;
            if (!sawEquals)
            {
                if (!first || impliedKey is null)
                {
                    throw new FormatException($"Expected '=' after parameter '{key}'");
                }

                value = key;
                key = impliedKey;
            }
            else
            {
                value = ReadUntil(text, ref position, stopAtEquals: false, out _);
            }

            if (key.Length == 0)
            {
                throw new FormatException("Invalid parameter ''");
            }

            order.Add((key, value));
            first = false;
        }

        var tree = new Dictionary<string, object>(StringComparer.Ordinal);
        foreach (var (key, value) in order)
        {
            Insert(tree, key.Split('.'), 0, value, key);
        }

        var buffer = new ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            Write(writer, tree);
        }

        using var document = JsonDocument.Parse(buffer.WrittenMemory);
        return document.RootElement.Clone();
    }

    static string ReadUntil(string text, ref int position, bool stopAtEquals, out bool sawEquals)
    {
        var value = new StringBuilder();
        sawEquals = false;
        while (position < text.Length)
        {
            var c = text[position++];
            if (c == ',')
            {
                if (position < text.Length && text[position] == ',' && !stopAtEquals)
                {
                    value.Append(',');
                    position++;
                    continue;
                }

                return value.ToString();
            }

            if (c == '=' && stopAtEquals)
            {
                sawEquals = true;
                return value.ToString();
            }

            value.Append(c);
        }

        return value.ToString();
    }

    static void Insert(Dictionary<string, object> node, string[] path, int index, string value, string fullKey)
    {
        var name = path[index];
        if (name.Length == 0)
        {
            throw new FormatException($"Invalid parameter '{fullKey}'");
        }

        if (index == path.Length - 1)
        {
            if (node.ContainsKey(name))
            {
                throw new FormatException($"Parameter '{fullKey}' is set more than once, or conflicts with a nested key");
            }

            node[name] = value;
            return;
        }

        if (!node.TryGetValue(name, out var child))
        {
            child = new Dictionary<string, object>(StringComparer.Ordinal);
            node[name] = child;
        }

        if (child is not Dictionary<string, object> nested)
        {
            throw new FormatException($"Parameter '{string.Join('.', path[..(index + 1)])}' conflicts with a nested key");
        }

        Insert(nested, path, index + 1, value, fullKey);
    }

    static void Write(Utf8JsonWriter writer, Dictionary<string, object> node)
    {
        writer.WriteStartObject();
        foreach (var (key, value) in node)
        {
            writer.WritePropertyName(key);
            if (value is string text)
            {
                writer.WriteStringValue(text);
            }
            else
            {
                Write(writer, (Dictionary<string, object>)value);
            }
        }

        writer.WriteEndObject();
    }
}
