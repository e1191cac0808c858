using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.Block.Qapi;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Qmp.Events;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>The events the daemon sends are the ones query-qmp-schema declares, with the data it declares.</summary>
public sealed class QmpEventSchemaTests
{
    /// <summary>One of each job event, as the job layer makes them.</summary>
    static readonly JobEvent[] JobEvents =
    [
        new JobStatusChangeEvent("j", JobStatus.Running),
        new BlockJobReadyEvent(JobType.Mirror, "j", 10, 5, 0),
        new BlockJobCompletedEvent(JobType.Commit, "j", 10, 10, 0, null),
        new BlockJobCompletedEvent(JobType.Mirror, "j", 10, 3, 0, "Input/output error"),
        new BlockJobCancelledEvent(JobType.Mirror, "j", 10, 3, 7),
        new BlockJobErrorEvent("j", IsRead: true, BlockErrorAction.Stop),
        new BlockJobPendingEvent(JobType.Mirror, "j"),
    ];

    [Fact]
    public void Every_kind_of_job_event_is_written_as_declared()
    {
        var kinds = typeof(JobEvent).Assembly.GetTypes().Where(t => t.IsSubclassOf(typeof(JobEvent)) && !t.IsAbstract);
        Assert.Equal(kinds.Select(t => t.Name).Order(StringComparer.Ordinal), JobEvents.Select(e => e.GetType().Name).Distinct().Order(StringComparer.Ordinal));
        foreach (var e in JobEvents)
        {
            AssertDeclared(JsonNode.Parse(QmpEventWriter.ToJson(e))!.AsObject());
        }
    }

    [Fact]
    public async Task The_daemons_own_events_are_declared()
    {
        using var dir = new TempDirectory("blockmirror-event-schema-");
        await using var daemon = new DaemonHarness();
        var raised = new List<QmpEvent>();
        daemon.Daemon.EventRaised += raised.Add;
        await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "n" });
        await daemon.ExecuteAsync("nbd-server-start", new JsonObject
        {
            ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = dir.File("nbd.sock") } },
        });
        await daemon.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "e", ["node-name"] = "n" });
        await daemon.ExecuteAsync("block-export-del", new JsonObject { ["id"] = "e" });

        Assert.Equal(["BLOCK_EXPORT_DELETED"], raised.Select(e => e.Name));
        foreach (var e in raised)
        {
            AssertDeclared(new JsonObject { ["event"] = e.Name, ["data"] = e.Data.DeepClone() });
        }
    }

    static void AssertDeclared(JsonObject message)
    {
        var name = (string)message["event"]!;
        var declared = QmpEvents.All.Where(e => e.Name == name).Select(e => e.Data).SingleOrDefault();
        Assert.True(declared is not null, $"{name} is not declared");
        AssertConforms(message["data"], declared, name);
    }

    /// <summary>A value has its declared type: every member declared, every required one there, scalars of their JSON type.</summary>
    static void AssertConforms(JsonNode? value, QapiType type, string where)
    {
        switch (type)
        {
            case QapiObject obj:
                var members = Assert.IsType<JsonObject>(value);
                foreach (var (member, memberValue) in members)
                {
                    var declared = obj.Members.FirstOrDefault(m => m.Name == member);
                    Assert.True(declared is not null, $"{where}: '{member}' is not declared");
                    AssertConforms(memberValue, declared.Type, $"{where}.{member}");
                }

                Assert.All(obj.Members.Where(m => !m.Optional), m => Assert.True(members.ContainsKey(m.Name), $"{where}: '{m.Name}' is missing"));
                break;
            case QapiEnum enumeration:
                Assert.Contains((string)value!, enumeration.Values);
                break;
            case QapiBuiltin builtin:
                var kind = value!.GetValueKind();
                Assert.True(builtin.JsonType switch
                {
                    "string" => kind == JsonValueKind.String,
                    "boolean" => kind is JsonValueKind.True or JsonValueKind.False,
                    "int" => kind == JsonValueKind.Number,
                    _ => true,
                }, $"{where}: {kind} is no {builtin.Name}");
                break;
        }
    }
}
