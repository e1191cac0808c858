using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// query-qmp-schema: the commands and events, with every type they reach, as QEMU's SchemaInfo list
/// (qapi/introspect.json). As QEMU does, types other than the builtins are named by opaque numbers (in the
/// order first met; <c>"0"</c> is the empty object), arrays <c>"[N]"</c>, and every integer type is <c>int</c>.
/// The declarations listed are those that check each command's arguments.
/// </summary>
public static class QmpIntrospection
{
    static readonly QapiBuiltin Str = QapiBuiltin.Str, Bool = QapiBuiltin.Bool;

    /// <summary>SchemaInfo, the type query-qmp-schema returns a list of.</summary>
    public static QapiObject SchemaInfo { get; } = BuildSchemaInfo();

    static QapiObject BuildSchemaInfo()
    {
        var features = new QapiArray(Str);
        var members = new QapiArray(new QapiObject("SchemaInfoObjectMember", ("name", Str), ("type", Str), ("*default", QapiBuiltin.Any), ("*features", features)));
        return QapiObject.Union("SchemaInfo",
            [("name", Str), ("meta-type", new QapiEnum("SchemaMetaType", ["builtin", "enum", "array", "object", "alternate", "command", "event"])), ("*features", features)],
            "meta-type",
            new("builtin", new QapiObject("SchemaInfoBuiltin",
                ("json-type", new QapiEnum("JSONType", ["string", "number", "int", "boolean", "null", "object", "array", "value"])))),
            new("enum", new QapiObject("SchemaInfoEnum",
                ("members", new QapiArray(new QapiObject("SchemaInfoEnumMember", ("name", Str), ("*features", features)))), ("values", new QapiArray(Str)))),
            new("array", new QapiObject("SchemaInfoArray", ("element-type", Str))),
            new("object", new QapiObject("SchemaInfoObject", ("members", members), ("*tag", Str),
                ("*variants", new QapiArray(new QapiObject("SchemaInfoObjectVariant", ("case", Str), ("type", Str)))))),
            new("alternate", new QapiObject("SchemaInfoAlternate", ("members", new QapiArray(new QapiObject("SchemaInfoAlternateMember", ("type", Str)))))),
            new("command", new QapiObject("SchemaInfoCommand", ("arg-type", Str), ("ret-type", Str), ("*allow-oob", Bool))),
            new("event", new QapiObject("SchemaInfoEvent", ("arg-type", Str))));
    }

    /// <summary>The SchemaInfo list of <paramref name="commands"/> (with qmp_capabilities) and <paramref name="events"/>.</summary>
    public static JsonArray Describe(IEnumerable<QmpCommand> commands, IEnumerable<(string Name, QapiObject Data)> events)
    {
        var namer = new Namer();
        var entries = new JsonArray();
        entries.Add((JsonNode)Command(namer, QmpCapabilities.Name, QmpCapabilities.Arguments, QapiObject.Empty));
        foreach (var command in commands)
        {
            entries.Add((JsonNode)Command(namer, command.Name, command.Arguments, command.Returns));
        }

        foreach (var (name, data) in events)
        {
            entries.Add((JsonNode)new JsonObject { ["name"] = name, ["meta-type"] = "event", ["arg-type"] = namer.Name(data) });
        }

        // Describing a type can meet new ones: go on until every type named is described.
        for (var i = 0; i < namer.Pending.Count; i++)
        {
            entries.Add((JsonNode)Describe(namer, namer.Pending[i]));
        }

        return entries;
    }

    static JsonObject Command(Namer namer, string name, QapiObject arguments, QapiType returns) => new()
    {
        ["name"] = name,
        ["meta-type"] = "command",
        ["arg-type"] = namer.Name(arguments),
        ["ret-type"] = namer.Name(returns),
    };

    static JsonObject Describe(Namer namer, QapiType type)
    {
        var name = namer.Name(type);
        switch (type)
        {
            case QapiBuiltin builtin:
                return new JsonObject { ["name"] = name, ["meta-type"] = "builtin", ["json-type"] = builtin.JsonType };
            case QapiEnum enumeration:
                return new JsonObject
                {
                    ["name"] = name,
                    ["meta-type"] = "enum",
                    ["members"] = new JsonArray([.. enumeration.Values.Select(v => (JsonNode)new JsonObject { ["name"] = v })]),
                    ["values"] = new JsonArray([.. enumeration.Values.Select(v => (JsonNode)JsonValue.Create(v))]),
                };
            case QapiArray array:
                return new JsonObject { ["name"] = name, ["meta-type"] = "array", ["element-type"] = namer.Name(array.Element) };
            case QapiAlternate alternate:
                return new JsonObject
                {
                    ["name"] = name,
                    ["meta-type"] = "alternate",
                    ["members"] = new JsonArray([.. alternate.Branches.Select(b => (JsonNode)new JsonObject { ["type"] = namer.Name(b) })]),
                };
            case QapiObject obj:
                var info = new JsonObject
                {
                    ["name"] = name,
                    ["meta-type"] = "object",
                    ["members"] = new JsonArray([.. obj.Members.Select(m => (JsonNode)Member(namer, m))]),
                };
                if (obj.Tag is { } tag)
                {
                    info["tag"] = tag;
                    info["variants"] = new JsonArray([.. obj.Variants.Select(v => (JsonNode)new JsonObject { ["case"] = v.Case, ["type"] = namer.Name(v.Type) })]);
                }

                return info;
            default:
                throw new ArgumentException($"no SchemaInfo for {type.GetType().Name}", nameof(type));
        }
    }

    /// <summary>SchemaInfoObjectMember: an optional member has <c>"default": null</c>, as QEMU writes it.</summary>
    static JsonObject Member(Namer namer, QapiMember member)
    {
        var info = new JsonObject { ["name"] = member.Name, ["type"] = namer.Name(member.Type) };
        if (member.Optional)
        {
            info["default"] = null;
        }

        return info;
    }

    /// <summary>Names types as they are met, and remembers which still need describing.</summary>
    sealed class Namer
    {
        readonly Dictionary<QapiType, string> _names = new(ReferenceEqualityComparer.Instance);
        readonly HashSet<string> _shared = new(StringComparer.Ordinal);
        int _next;

        public Namer() => Name(QapiObject.Empty);

        public List<QapiType> Pending { get; } = [];

        public string Name(QapiType type)
        {
            if (_names.TryGetValue(type, out var name))
            {
                return name;
            }

            name = type switch
            {
                QapiBuiltin builtin => builtin.SchemaName,
                QapiArray array => "[" + Name(array.Element) + "]",
                _ => (_next++).ToString(System.Globalization.CultureInfo.InvariantCulture),
            };
            _names[type] = name;
            // Names are shared by every integer type ("int") and by lists of one element type: describe each once.
            if (_shared.Add(name))
            {
                Pending.Add(type);
            }

            return name;
        }
    }
}
