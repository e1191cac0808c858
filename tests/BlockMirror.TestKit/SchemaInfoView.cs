using System.Text.Json.Nodes;

namespace BlockMirror.TestKit;

/// <summary>
/// A query-qmp-schema answer (QEMU's SchemaInfo list) with its opaque type names resolved, so two daemons'
/// schemas, whose numbers differ, can be compared by what they declare.
/// </summary>
public sealed class SchemaInfoView
{
    readonly Dictionary<string, JsonObject> _entries = new(StringComparer.Ordinal);

    public SchemaInfoView(JsonArray schema)
    {
        foreach (var entry in schema)
        {
            var info = entry!.AsObject();
            _entries[(string)info["name"]!] = info;
        }
    }

    public IEnumerable<string> Commands => Names("command");

    public IEnumerable<string> Events => Names("event");

    IEnumerable<string> Names(string metaType) =>
        _entries.Values.Where(e => (string)e["meta-type"]! == metaType).Select(e => (string)e["name"]!).Order(StringComparer.Ordinal);

    public JsonObject Entry(string name) => _entries[name];

    /// <summary>The arguments (a command's) or data (an event's) object of <paramref name="entity"/>.</summary>
    public JsonObject Arguments(string entity) => Type((string)_entries[entity]["arg-type"]!);

    /// <summary>The entry of a type by its name in this schema; a list type <c>[N]</c>, which QEMU names but does not list, as an array entry.</summary>
    public JsonObject Type(string name) => name.StartsWith('[')
        ? new JsonObject { ["name"] = name, ["meta-type"] = "array", ["element-type"] = name[1..^1] }
        : _entries[name];

    /// <summary>
    /// Every member name an object may hold at its top level: its own, and those of every variant, or with
    /// <paramref name="value"/> those of the variant its tag selects.
    /// </summary>
    public IReadOnlySet<string> TopLevelMembers(JsonObject type, JsonObject? value = null)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var member in type["members"]!.AsArray())
        {
            names.Add((string)member!["name"]!);
        }

        var tag = (string?)type["tag"];
        foreach (var variant in type["variants"]?.AsArray() ?? [])
        {
            if (value is null || tag is null || (string?)value[tag] == (string)variant!["case"]!)
            {
                names.UnionWith(TopLevelMembers(Type((string)variant!["type"]!)));
            }
        }

        return names;
    }

    /// <summary>
    /// What <paramref name="entity"/>'s arguments declare, one line per member at every depth:
    /// <c>path name[?]: kind</c> (a <c>?</c> marks an optional member; kind is a builtin's name or enum,
    /// object, array, alternate), and an enum's values as <c>path name = value</c> (but a union tag's). Nested objects (members, list items, an alternate's object branch) extend the
    /// path with <c>name.</c>; a union's variant with <c>{tag=case}</c>. A type met again on its own path is not
    /// entered again (BlockdevOptions inside BlockdevRef).
    /// </summary>
    public SortedSet<string> Signature(string entity)
    {
        var lines = new SortedSet<string>(StringComparer.Ordinal);
        AddObject(lines, "", Arguments(entity), []);
        return lines;
    }

    /// <summary>
    /// What <paramref name="command"/> returns, in <see cref="Signature"/>'s lines: the first is <c>: kind</c> of
    /// the value itself, then one per member of the objects it holds (a list's items have no path of their own).
    /// </summary>
    public SortedSet<string> ReturnSignature(string command)
    {
        var type = Type((string)_entries[command]["ret-type"]!);
        var lines = new SortedSet<string>(StringComparer.Ordinal) { ": " + Kind(type) };
        AddNested(lines, "", type, []);
        return lines;
    }

    void AddObject(SortedSet<string> lines, string path, JsonObject type, List<string> seen)
    {
        var name = (string)type["name"]!;
        if (seen.Contains(name))
        {
            return;
        }

        seen = [.. seen, name];
        foreach (var member in type["members"]!.AsArray())
        {
            var memberName = (string)member!["name"]!;
            var optional = member.AsObject().ContainsKey("default") ? "?" : "";
            var memberType = Type((string)member["type"]!);
            lines.Add($"{path}{memberName}{optional}: {Kind(memberType)}");
            // An enum's values, but a union tag's: its cases are compared as variants.
            if ((string)memberType["meta-type"]! == "enum" && memberName != (string?)type["tag"])
            {
                foreach (var value in memberType["values"]!.AsArray())
                {
                    lines.Add($"{path}{memberName} = {value}");
                }
            }

            AddNested(lines, $"{path}{memberName}.", memberType, seen);
        }

        foreach (var variant in type["variants"]?.AsArray() ?? [])
        {
            AddObject(lines, $"{path}{{{type["tag"]}={variant!["case"]}}}", Type((string)variant["type"]!), seen);
        }
    }

    void AddNested(SortedSet<string> lines, string path, JsonObject type, List<string> seen)
    {
        switch ((string)type["meta-type"]!)
        {
            case "object":
                AddObject(lines, path, type, seen);
                break;
            case "array":
                AddNested(lines, path, Type((string)type["element-type"]!), seen);
                break;
            case "alternate":
                foreach (var branch in type["members"]!.AsArray())
                {
                    AddNested(lines, path, Type((string)branch!["type"]!), seen);
                }

                break;
        }
    }

    string Kind(JsonObject type) => (string)type["meta-type"]! switch
    {
        "builtin" => (string)type["name"]!,
        "array" => "[" + Kind(Type((string)type["element-type"]!)) + "]",
        "alternate" => "alternate(" + string.Join("|", type["members"]!.AsArray().Select(b => Kind(Type((string)b!["type"]!))).Order(StringComparer.Ordinal)) + ")",
        var meta => meta,
    };
}
