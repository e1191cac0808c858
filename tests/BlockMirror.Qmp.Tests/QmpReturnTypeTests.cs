using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// What each command returns is what query-qmp-schema says it returns: every command the monitor accepts is
/// run over a monitor socket, with valid arguments against a small real graph (files, qcow2 images, a backing
/// chain, null nodes, an NBD export, jobs in each state a verb needs), and each answer is checked against the
/// command's <c>ret-type</c> in our own schema (<see cref="SchemaValueCheck"/>).
/// </summary>
public sealed class QmpReturnTypeTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-return-types-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Every_command_answers_with_the_type_the_schema_declares_it_returns()
    {
        await using var monitor = new MonitorHarness("return-types");
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath);
        var answers = new List<(string Command, JsonNode? Return)>();

        async Task<JsonNode?> Run(string command, JsonObject? arguments = null)
        {
            var reply = await client.CommandAsync(command, arguments);
            Assert.True(reply.ContainsKey("return"), $"{command} {arguments?.ToJsonString()}: {reply.ToJsonString()}");
            answers.Add((command, reply["return"]?.DeepClone()));
            return reply["return"];
        }

        Task Status(string id, string status) =>
            client.WaitEventAsync("JOB_STATUS_CHANGE", e => (string)e["data"]!["id"]! == id && (string)e["data"]!["status"]! == status);

        // qmp_capabilities, on a monitor of its own (this client has negotiated already).
        await using (var fresh = await QmpClient.ConnectAsync(monitor.SocketPath, negotiate: false))
        {
            var reply = await fresh.CommandAsync("qmp_capabilities");
            answers.Add(("qmp_capabilities", reply["return"]?.DeepClone()));
        }

        var schema = new SchemaInfoView((JsonArray)(await Run("query-qmp-schema"))!);
        await Run("query-version");
        await Run("query-commands");

        // Images made by blockdev-create: a qcow2 with a backing file, over file nodes.
        async Task CreateAsync(string id, JsonObject options)
        {
            await Run("blockdev-create", new JsonObject { ["job-id"] = id, ["options"] = options });
            await Status(id, "concluded");
            await Run("query-jobs");
            await Run("job-dismiss", new JsonObject { ["id"] = id });
        }

        foreach (var name in new[] { "base", "top" })
        {
            await CreateAsync($"create-{name}-file", new JsonObject { ["driver"] = "file", ["filename"] = _dir.File($"{name}.qcow2"), ["size"] = 0 });
            await Run("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = $"{name}-file", ["filename"] = _dir.File($"{name}.qcow2") });
            var qcow2 = new JsonObject { ["driver"] = "qcow2", ["file"] = $"{name}-file", ["size"] = 4 << 20 };
            if (name == "top")
            {
                qcow2["backing-file"] = _dir.File("base.qcow2");
                qcow2["backing-fmt"] = "qcow2";
            }

            await CreateAsync($"create-{name}", qcow2);
        }

        await Run("blockdev-add", new JsonObject { ["driver"] = "qcow2", ["node-name"] = "base", ["file"] = "base-file" });
        await Run("blockdev-add", new JsonObject { ["driver"] = "qcow2", ["node-name"] = "top", ["file"] = "top-file", ["backing"] = "base" });
        foreach (var name in new[] { "s1", "t1", "s2", "s3", "t3", "s4", "t4", "spare" })
        {
            await Run("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = name, ["size"] = 1 << 20 });
        }

        await Run("blockdev-del", new JsonObject { ["node-name"] = "spare" });

        // An export with a client's writes, so the statistics have something in them.
        await Run("nbd-server-start", new JsonObject
        {
            ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = _dir.File("nbd.sock") } },
        });
        await Run("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "export", ["node-name"] = "top", ["writable"] = true });
        await Run("query-block-exports");

        // Dirty bitmaps, one of them persistent, each command and a transaction, so nodes list them.
        JsonObject Bitmap(string name) => new() { ["node"] = "top", ["name"] = name };
        await Run("block-dirty-bitmap-add", new JsonObject { ["node"] = "top", ["name"] = "b1", ["granularity"] = 65536, ["persistent"] = true });
        await Run("block-dirty-bitmap-add", new JsonObject { ["node"] = "top", ["name"] = "b2", ["disabled"] = true });
        await Run("block-dirty-bitmap-add", Bitmap("b3"));
        await Run("block-dirty-bitmap-disable", Bitmap("b1"));
        await Run("block-dirty-bitmap-enable", Bitmap("b1"));
        await Run("block-dirty-bitmap-merge", new JsonObject { ["node"] = "top", ["target"] = "b2", ["bitmaps"] = new JsonArray("b1", Bitmap("b3")) });
        await Run("block-dirty-bitmap-clear", Bitmap("b2"));
        await Run("block-dirty-bitmap-remove", Bitmap("b3"));
        await Run("transaction", new JsonObject
        {
            ["actions"] = new JsonArray(new JsonObject { ["type"] = "block-dirty-bitmap-add", ["data"] = Bitmap("b4") }),
            ["properties"] = new JsonObject { ["completion-mode"] = "individual" },
        });
        await Run("block-set-write-threshold", new JsonObject { ["node-name"] = "top", ["write-threshold"] = 1 << 20 });
        await Run("query-block");
        await Run("query-named-block-nodes");
        await Run("query-named-block-nodes", new JsonObject { ["flat"] = true });
        await Run("query-blockstats");
        await Run("query-blockstats", new JsonObject { ["query-nodes"] = true });
        await Run("block-export-del", new JsonObject { ["id"] = "export" });
        await Run("nbd-server-stop");
        await Run("block_resize", new JsonObject { ["node-name"] = "top", ["size"] = 8 << 20 });

        // A mirror taken through every verb: speed, pause and resume both ways, copy mode, complete, finalize, dismiss.
        await Run("blockdev-mirror", new JsonObject
        {
            ["job-id"] = "m1", ["device"] = "s1", ["target"] = "t1", ["sync"] = "full", ["auto-finalize"] = false, ["auto-dismiss"] = false,
        });
        await client.WaitEventAsync("BLOCK_JOB_READY", e => (string)e["data"]!["device"]! == "m1");
        await Run("query-block-jobs");
        await Run("query-jobs");
        await Run("block-job-set-speed", new JsonObject { ["device"] = "m1", ["speed"] = 0 });
        await Run("block-job-pause", new JsonObject { ["device"] = "m1" });
        await Run("block-job-resume", new JsonObject { ["device"] = "m1" });
        await Run("job-pause", new JsonObject { ["id"] = "m1" });
        await Run("job-resume", new JsonObject { ["id"] = "m1" });
        await Run("block-job-change", new JsonObject { ["id"] = "m1", ["type"] = "mirror", ["copy-mode"] = "write-blocking" });
        await Run("block-job-complete", new JsonObject { ["device"] = "m1" });
        await Status("m1", "pending");
        await Run("query-block-jobs");
        await Run("block-job-finalize", new JsonObject { ["id"] = "m1" });
        await Status("m1", "concluded");
        await Run("query-jobs");
        await Run("block-job-dismiss", new JsonObject { ["id"] = "m1" });

        // drive-mirror into a new image, ended by job-complete and job-finalize.
        await Run("drive-mirror", new JsonObject
        {
            ["job-id"] = "m2", ["device"] = "s2", ["target"] = _dir.File("m2.qcow2"), ["format"] = "qcow2", ["sync"] = "full",
            ["auto-finalize"] = false,
        });
        await client.WaitEventAsync("BLOCK_JOB_READY", e => (string)e["data"]!["device"]! == "m2");
        await Run("job-complete", new JsonObject { ["id"] = "m2" });
        await Status("m2", "pending");
        await Run("job-finalize", new JsonObject { ["id"] = "m2" });
        await Status("m2", "null");

        // Cancels, both ways.
        foreach (var (id, cancel) in new[] { ("m3", "block-job-cancel"), ("m4", "job-cancel") })
        {
            await Run("blockdev-mirror", new JsonObject { ["job-id"] = id, ["device"] = $"s{id[1]}", ["target"] = $"t{id[1]}", ["sync"] = "full" });
            await client.WaitEventAsync("BLOCK_JOB_READY", e => (string)e["data"]!["device"]! == id);
            await Run(cancel, cancel == "job-cancel" ? new JsonObject { ["id"] = id } : new JsonObject { ["device"] = id });
            await Status(id, "null");
        }

        // An active commit of the chain, with a job in query-block-jobs while it runs.
        await Run("block-commit", new JsonObject { ["job-id"] = "k", ["device"] = "top" });
        await client.WaitEventAsync("BLOCK_JOB_READY", e => (string)e["data"]!["device"]! == "k");
        await Run("query-block-jobs");
        await Run("block-job-complete", new JsonObject { ["device"] = "k" });
        await Status("k", "null");

        // TLS credentials: the one kind of object there is.
        var keys = _dir.File("psk");
        Directory.CreateDirectory(keys);
        await File.WriteAllTextAsync(Path.Combine(keys, "keys.psk"), "user:0123456789abcdef0123456789abcdef\n");
        await Run("object-add", new JsonObject { ["qom-type"] = "tls-creds-psk", ["id"] = "psk", ["dir"] = keys, ["endpoint"] = "server" });
        await Run("object-del", new JsonObject { ["id"] = "psk" });
        await Run("quit");

        var accepted = schema.Commands.ToHashSet(StringComparer.Ordinal);
        Assert.Equal(accepted.Order(StringComparer.Ordinal), answers.Select(a => a.Command).Distinct().Order(StringComparer.Ordinal));
        var problems = answers.SelectMany(a => SchemaValueCheck.Problems(schema, (string)schema.Entry(a.Command)["ret-type"]!, a.Return, a.Command)).ToList();
        Assert.True(problems.Count == 0, string.Join("\n", problems));
        // The answers that carry something carried it: a check of empty lists would prove little.
        Assert.All(["query-block-jobs", "query-jobs", "query-named-block-nodes", "query-block-exports"],
            command => Assert.Contains(answers, a => a.Command == command && a.Return is JsonArray { Count: > 0 }));
        Assert.Contains(answers, a => a.Command == "query-blockstats" && a.Return is JsonArray list && list.Any(s => s!["parent"]?["driver-specific"] is not null));
        Assert.Contains(answers, a => a.Command == "query-named-block-nodes" && a.Return is JsonArray list && list.Any(n => n!["dirty-bitmaps"] is JsonArray { Count: > 0 }));
    }

    /// <summary>The check itself: a member missing, of the wrong type, undeclared, or an enum value outside the enum is found.</summary>
    [Fact]
    public async Task A_missing_mistyped_or_undeclared_member_is_found()
    {
        await using var monitor = new MonitorHarness("return-types-check");
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath);
        var schema = new SchemaInfoView((JsonArray)(await client.ExecuteAsync("query-qmp-schema"))!);
        var version = (string)schema.Entry("query-version")["ret-type"]!;
        var jobs = (string)schema.Entry("query-jobs")["ret-type"]!;
        static JsonObject Version() => new() { ["qemu"] = new JsonObject { ["major"] = 7, ["minor"] = 2, ["micro"] = 0 }, ["package"] = "" };
        static JsonArray Jobs(JsonNode status) =>
            [new JsonObject { ["id"] = "j", ["type"] = "mirror", ["status"] = status, ["current-progress"] = 0, ["total-progress"] = 1 }];

        Assert.Empty(SchemaValueCheck.Problems(schema, version, Version()));
        Assert.Empty(SchemaValueCheck.Problems(schema, jobs, Jobs("running")));

        var missing = Version();
        missing["qemu"]!.AsObject().Remove("micro");
        Assert.Equal(["$.qemu.micro: required and missing"], SchemaValueCheck.Problems(schema, version, missing));
        var mistyped = Version();
        mistyped["package"] = 1;
        mistyped["qemu"]!["minor"] = 2.5;
        Assert.Equal(2, SchemaValueCheck.Problems(schema, version, mistyped).Count);
        var undeclared = Version();
        undeclared["extra"] = true;
        Assert.Equal(["$.extra: not a member of " + version], SchemaValueCheck.Problems(schema, version, undeclared));
        Assert.Single(SchemaValueCheck.Problems(schema, jobs, Jobs("sleeping")));
        Assert.Single(SchemaValueCheck.Problems(schema, jobs, new JsonObject()));
    }
}
