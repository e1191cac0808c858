using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;
using BlockMirror.Qmp.Commands;
using BlockMirror.Qmp.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// query-qmp-schema and the declarations behind it: the schema lists exactly the commands the monitor
/// accepts, with the members each accepts; every declared member is read by its handler (none is refused as
/// unexpected, none read is undeclared); a member the schema does not list is refused as unexpected.
/// </summary>
public sealed class QmpSchemaTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-schema-test-");

    public void Dispose() => _dir.Dispose();

    static async Task<SchemaInfoView> SchemaAsync(DaemonHarness daemon) =>
        new((JsonArray)(await daemon.ExecuteAsync("query-qmp-schema"))!);

    [Fact]
    public async Task The_schema_lists_every_command_the_monitor_accepts_with_its_members_and_types()
    {
        await using var daemon = new DaemonHarness();
        var schema = await SchemaAsync(daemon);

        Assert.Equal([.. daemon.Daemon.Commands.Names.Append(QmpCapabilities.Name).Order(StringComparer.Ordinal)], schema.Commands);
        foreach (var command in daemon.Daemon.Commands.All)
        {
            var arguments = schema.Arguments(command.Name);
            var listed = arguments["members"]!.AsArray().ToDictionary(m => (string)m!["name"]!, m => m!.AsObject());
            Assert.Equal([.. command.Arguments.Members.Select(m => m.Name)], listed.Keys);
            foreach (var member in command.Arguments.Members)
            {
                var entry = listed[member.Name];
                Assert.Equal(member.Optional, entry.ContainsKey("default"));
                var type = (string)entry["type"]!;
                switch (member.Type)
                {
                    case QapiBuiltin builtin:
                        Assert.Equal(builtin.SchemaName, type);
                        break;
                    case QapiEnum enumeration:
                        Assert.Equal(enumeration.Values, schema.Entry(type)["values"]!.AsArray().Select(v => (string)v!));
                        break;
                    case QapiArray:
                        Assert.StartsWith("[", type, StringComparison.Ordinal);
                        break;
                    default:
                        Assert.Equal(member.Type is QapiObject ? "object" : "alternate", (string)schema.Entry(type)["meta-type"]!);
                        break;
                }
            }
        }
    }

    [Fact]
    public async Task Every_type_the_schema_names_is_described_and_only_builtins_have_names()
    {
        await using var daemon = new DaemonHarness();
        var entries = ((JsonArray)(await daemon.ExecuteAsync("query-qmp-schema"))!).Select(e => e!.AsObject()).ToList();
        var names = entries.Select(e => (string)e["name"]!).ToHashSet(StringComparer.Ordinal);

        Assert.Equal(names.Count, entries.Count);
        var referenced = entries.SelectMany(e => new[] { e["arg-type"], e["ret-type"], e["element-type"] }
            .Concat(e["members"]?.AsArray().Select(m => m!["type"]) ?? [])
            .Concat(e["variants"]?.AsArray().Select(v => v!["type"]) ?? []))
            .OfType<JsonNode>().Select(n => (string)n!).ToHashSet(StringComparer.Ordinal);
        Assert.Subset(names, referenced);
        foreach (var entry in entries.Where(e => (string)e["meta-type"]! is "object" or "enum" or "alternate"))
        {
            Assert.True(int.TryParse((string)entry["name"]!, out _), $"{entry["name"]} is not an opaque number");
        }

        Assert.Equal(
            ["any:value", "bool:boolean", "int:int", "null:null", "number:number", "str:string"],
            entries.Where(e => (string)e["meta-type"]! == "builtin").Select(e => $"{e["name"]}:{e["json-type"]}").Order(StringComparer.Ordinal));
        Assert.Equal("0", (string)schema(entries, "quit")["arg-type"]!);
        Assert.Empty(entries.Single(e => (string)e["name"]! == "0")["members"]!.AsArray());

        static JsonObject schema(List<JsonObject> entries, string name) => entries.Single(e => (string)e["name"]! == name);
    }

    [Fact]
    public async Task Every_declared_member_is_read_by_its_handler_and_no_read_is_undeclared()
    {
        var runs = 0;
        foreach (var command in new StorageDaemon().Commands.All.Where(c => c.Name != "quit"))
        {
            foreach (var arguments in Cases(command.Arguments, depth: 0))
            {
                await using var daemon = new DaemonHarness();
                await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = ExistingNode });
                var error = await ErrorOfAsync(daemon, command.Name, arguments);
                Assert.False(error.Contains("is unexpected", StringComparison.Ordinal) || error.Contains("does not list it", StringComparison.Ordinal),
                    $"{command.Name} {arguments.ToJsonString()}: {error}");
                runs++;
            }
        }

        Assert.True(runs > 300, $"only {runs} runs");
    }

    [Fact]
    public async Task A_member_the_schema_does_not_list_is_refused_as_unexpected_and_one_it_lists_is_not()
    {
        await using var daemon = new DaemonHarness();
        var schema = await SchemaAsync(daemon);
        var candidates = schema.Commands.SelectMany(c => schema.TopLevelMembers(schema.Arguments(c))).Append("__org.example_unknown").ToHashSet(StringComparer.Ordinal);

        foreach (var command in daemon.Daemon.Commands.All.Where(c => c.Name != "quit"))
        {
            var skeleton = Cases(command.Arguments, depth: 0).First();
            var listed = schema.TopLevelMembers(schema.Arguments(command.Name), skeleton);
            foreach (var name in candidates.Where(n => !skeleton.ContainsKey(n)))
            {
                await using var fresh = new DaemonHarness();
                var arguments = (JsonObject)skeleton.DeepClone();
                arguments[name] = Sample(QapiBuiltin.Str, name);
                var error = await ErrorOfAsync(fresh, command.Name, arguments);
                Assert.True(!listed.Contains(name) == (error == $"Parameter '{name}' is unexpected"), $"{command.Name} {arguments.ToJsonString()}: {error}");
            }
        }
    }

    [Fact]
    public async Task Qmp_capabilities_is_checked_against_its_declaration()
    {
        await using var monitor = new MonitorHarness("schema-capabilities");
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath, negotiate: false);

        async Task<string> ErrorAsync(JsonObject arguments) => (string)(await client.CommandAsync(QmpCapabilities.Name, arguments))["error"]!["desc"]!;
        Assert.Equal("Invalid parameter type for 'enable[0]', expected: string", await ErrorAsync(new JsonObject { ["enable"] = new JsonArray(1) }));
        Assert.Equal("Parameter 'null' does not accept value 'x'", await ErrorAsync(new JsonObject { ["enable"] = new JsonArray("x") }));
        Assert.Equal("Parameter 'other' is unexpected", await ErrorAsync(new JsonObject { ["other"] = 1 }));
        Assert.Equal("Capability 'oob' is not available", await ErrorAsync(new JsonObject { ["enable"] = new JsonArray("oob") }));
    }

    const string ExistingNode = "n0";

    static async Task<string> ErrorOfAsync(DaemonHarness daemon, string command, JsonObject arguments)
    {
        try
        {
            await daemon.ExecuteAsync(command, arguments);
            return "";
        }
        catch (QmpException ex)
        {
            return ex.Message;
        }
    }

    /// <summary>
    /// Arguments for <paramref name="type"/>: for each variant, its required members alone, then with each
    /// member (optional ones included, nested ones each in turn) given, so that a handler that refuses one
    /// value early cannot hide whether it reads the others.
    /// </summary>
    IEnumerable<JsonObject> Cases(QapiObject type, int depth)
    {
        IEnumerable<(string? Case, IReadOnlyList<QapiMember> Members)> selections = type.Tag is null || type.Variants.Count == 0
            ? [(null, type.Members)]
            : type.Variants.Select(v => ((string?)v.Case, (IReadOnlyList<QapiMember>)[.. type.Members, .. v.Type.Members]));
        foreach (var (tagValue, members) in selections)
        {
            var skeleton = new JsonObject();
            foreach (var member in members.Where(m => !m.Optional))
            {
                skeleton[member.Name] = member.Name == type.Tag ? tagValue : Values(member, depth).First();
            }

            yield return skeleton;
            foreach (var member in members.Where(m => m.Name != type.Tag))
            {
                foreach (var value in Values(member, depth).Skip(member.Optional ? 0 : 1))
                {
                    var arguments = (JsonObject)skeleton.DeepClone();
                    arguments[member.Name] = value;
                    yield return arguments;
                }
            }
        }
    }

    IEnumerable<JsonNode?> Values(QapiMember member, int depth) => Values(member.Type, member.Name, depth);

    IEnumerable<JsonNode?> Values(QapiType type, string name, int depth) => type switch
    {
        QapiObject nested => Cases(nested, depth + 1),
        QapiArray array => Values(array.Element, name, depth).Select(v => (JsonNode?)new JsonArray(v)),
        // An alternate: its scalar branch (a node name) first; its object branch near the top only.
        QapiAlternate alternate => alternate.Branches.Where(b => b is not QapiObject || depth < 1)
            .OrderBy(b => b is QapiObject).SelectMany(b => Values(b, name, depth)),
        _ => [Sample(type, name)],
    };

    /// <summary>A valid value of a scalar type; names that would touch the system point into the test's directory.</summary>
    JsonNode? Sample(QapiType type, string name) => type switch
    {
        QapiEnum enumeration => enumeration.Values[0],
        _ when type == QapiBuiltin.Str => name switch
        {
            "filename" or "path" or "target" or "dir" or "config" => Path.Combine(_dir.Path, "missing"),
            "host" => "127.0.0.1",
            "port" => "0",
            _ => ExistingNode,
        },
        _ when type == QapiBuiltin.Bool => false,
        _ when type == QapiBuiltin.Null => null,
        _ when type == QapiBuiltin.Any => "x",
        // Timeouts and delays 0: a connection that fails is not retried for a second.
        _ => name is "open-timeout" or "reconnect-delay" or "latency-ns" ? 0 : 1,
    };
}
