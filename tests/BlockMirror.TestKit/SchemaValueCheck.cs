using System.Text.Json;
using System.Text.Json.Nodes;

namespace BlockMirror.TestKit;

/// <summary>
/// Checks a JSON value against a type of a query-qmp-schema answer (<see cref="SchemaInfoView"/>), as QEMU's
/// output visitor would have produced it: an object has every required member, no member its type (or the
/// variant its tag selects) does not declare, and each member of its declared type; a list's items are of its
/// element type; an enum's value is one of its values; <c>int</c> is an integral number, <c>number</c> any
/// number, <c>any</c> anything; an alternate takes the branch whose JSON type the value has.
/// </summary>
public static class SchemaValueCheck
{
    /// <summary>What is wrong with <paramref name="value"/> as a <paramref name="typeName"/>, one line per problem with its path; empty when it conforms.</summary>
    public static List<string> Problems(SchemaInfoView schema, string typeName, JsonNode? value, string path = "$")
    {
        var problems = new List<string>();
        Check(schema, schema.Type(typeName), value, path, problems);
        return problems;
    }

    static void Check(SchemaInfoView schema, JsonObject type, JsonNode? value, string path, List<string> problems)
    {
        var kind = value?.GetValueKind() ?? JsonValueKind.Null;
        switch ((string)type["meta-type"]!)
        {
            case "builtin":
                if (!IsJsonType((string)type["json-type"]!, value, kind))
                {
                    problems.Add($"{path}: {Show(value)} is not a {type["name"]}");
                }

                break;
            case "enum":
                var values = type["values"]!.AsArray().Select(v => (string)v!);
                if (kind != JsonValueKind.String || !values.Contains((string)value!, StringComparer.Ordinal))
                {
                    problems.Add($"{path}: {Show(value)} is not one of {string.Join("|", values)}");
                }

                break;
            case "array":
                if (value is not JsonArray array)
                {
                    problems.Add($"{path}: {Show(value)} is not a list");
                    break;
                }

                var element = schema.Type((string)type["element-type"]!);
                for (var i = 0; i < array.Count; i++)
                {
                    Check(schema, element, array[i], $"{path}[{i}]", problems);
                }

                break;
            case "alternate":
                var branch = type["members"]!.AsArray().Select(b => schema.Type((string)b!["type"]!))
                    .FirstOrDefault(b => Takes(b, value, kind));
                if (branch is null)
                {
                    problems.Add($"{path}: {Show(value)} fits no branch of the alternate");
                }
                else
                {
                    Check(schema, branch, value, path, problems);
                }

                break;
            case "object":
                if (value is not JsonObject obj)
                {
                    problems.Add($"{path}: {Show(value)} is not an object");
                    break;
                }

                CheckObject(schema, type, obj, path, problems);
                break;
            default:
                problems.Add($"{path}: type {type["name"]} is a {type["meta-type"]}, not a value's type");
                break;
        }
    }

    static void CheckObject(SchemaInfoView schema, JsonObject type, JsonObject value, string path, List<string> problems)
    {
        var members = new List<JsonObject>(type["members"]!.AsArray().Select(m => m!.AsObject()));
        if ((string?)type["tag"] is { } tag)
        {
            var tagValue = value[tag] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? (string)v! : null;
            var variant = type["variants"]!.AsArray().FirstOrDefault(c => (string)c!["case"]! == tagValue);
            if (variant is not null)
            {
                members.AddRange(schema.Type((string)variant["type"]!)["members"]!.AsArray().Select(m => m!.AsObject()));
            }
        }

        var declared = members.ToDictionary(m => (string)m["name"]!, StringComparer.Ordinal);
        foreach (var (name, memberValue) in value)
        {
            if (!declared.TryGetValue(name, out var member))
            {
                problems.Add($"{path}.{name}: not a member of {type["name"]}");
                continue;
            }

            Check(schema, schema.Type((string)member["type"]!), memberValue, $"{path}.{name}", problems);
        }

        foreach (var member in members.Where(m => !m.ContainsKey("default") && !value.ContainsKey((string)m["name"]!)))
        {
            problems.Add($"{path}.{member["name"]}: required and missing");
        }
    }

    /// <summary>Whether an alternate's branch of this type is the one a value of JSON kind <paramref name="kind"/> goes to.</summary>
    static bool Takes(JsonObject branch, JsonNode? value, JsonValueKind kind) => (string)branch["meta-type"]! switch
    {
        "builtin" => IsJsonType((string)branch["json-type"]!, value, kind),
        "enum" => kind == JsonValueKind.String,
        "array" => kind == JsonValueKind.Array,
        "object" => kind == JsonValueKind.Object,
        _ => false,
    };

    static bool IsJsonType(string jsonType, JsonNode? value, JsonValueKind kind) => jsonType switch
    {
        "string" => kind == JsonValueKind.String,
        "boolean" => kind is JsonValueKind.True or JsonValueKind.False,
        "number" => kind == JsonValueKind.Number,
        // QEMU's int, intN, uintN and size are all "int": a number without fraction or exponent.
        "int" => kind == JsonValueKind.Number && IsIntegral(value!),
        "null" => kind == JsonValueKind.Null,
        "value" => true,
        _ => false,
    };

    static bool IsIntegral(JsonNode value)
    {
        using var document = JsonDocument.Parse(value.ToJsonString());
        return document.RootElement.TryGetInt64(out _) || document.RootElement.TryGetUInt64(out _);
    }

    static string Show(JsonNode? value) => value?.ToJsonString() ?? "null";
}
