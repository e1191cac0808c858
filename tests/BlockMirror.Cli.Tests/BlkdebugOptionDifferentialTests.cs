using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// blkdebug's rules given badly to qemu-storage-daemon 7.2 and to <c>blockmirror serve</c>: inline
/// <c>inject-error</c>/<c>set-state</c> lists and <c>config</c> files with each kind of mistake, over QMP
/// (blockdev-add) and on the command line (<c>--blockdev</c>). Both refuse them with the same class and
/// text, which names neither the config file nor its line; a good config file is taken by both.
/// </summary>
public sealed class BlkdebugOptionDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("bm-blkdebug-differential-");

    public void Dispose() => _dir.Dispose();

    /// <summary>Config files by name; "missing" is never written, "dir" is a directory.</summary>
    static readonly Dictionary<string, string> Configs = new()
    {
        ["good"] = "# a comment\n[set-state]\nevent = \"flush_to_disk\"\nstate = \"1\"\nnew_state = \"2\"\n\n[inject-error]\nevent = \"read_aio\"\nerrno = \"0x1c\"\nonce = \"on\"\n",
        ["bad-event"] = "[inject-error]\nevent = \"nope\"\n",
        ["bad-errno"] = "[inject-error]\nevent = \"read_aio\"\nerrno = \"abc\"\n",
        ["big-errno"] = "[inject-error]\nevent = \"read_aio\"\nerrno = \"99999999999999999999\"\n",
        ["bad-section"] = "[bogus]\nevent = \"read_aio\"\n",
        ["bad-key"] = "[inject-error]\nevent = \"read_aio\"\nfoo = \"1\"\n",
        ["no-event"] = "[set-state]\nnew_state = \"2\"\n",
        ["no-group"] = "event = \"read_aio\"\n",
        ["blank-line"] = "[inject-error]\n  \n",
        ["bad-bool"] = "[inject-error]\nevent = \"read_aio\"\nimmediately = \"maybe\"\n",
        ["bad-iotype"] = "[inject-error]\nevent = \"read_aio\"\niotype = \"truncate\"\n",
        ["duplicate-id"] = "[set-state \"a\"]\nevent = \"read_aio\"\n[set-state \"a\"]\nevent = \"read_aio\"\n",
    };

    string WriteConfigs()
    {
        var dir = Path.Combine(_dir.Path, "configs");
        Directory.CreateDirectory(Path.Combine(dir, "dir"));
        foreach (var (name, text) in Configs)
        {
            File.WriteAllText(Path.Combine(dir, name), text);
        }

        return dir;
    }

    static IEnumerable<string> BlockdevAdds(string configs) =>
    [
        .. Configs.Keys.Append("missing").Append("dir").Select(name => $$"""
            {"driver": "blkdebug", "node-name": "dbg-{{name}}", "config": {{JsonSerializer.Serialize(Path.Combine(configs, name))}},
             "image": {"driver": "null-co"} }
            """),
        """{"driver": "blkdebug", "node-name": "i1", "image": {"driver": "null-co"}, "inject-error": [{"event": "nope"}]}""",
        """{"driver": "blkdebug", "node-name": "i2", "image": {"driver": "null-co"}, "inject-error": [{"event": "read_aio", "iotype": "truncate"}]}""",
        """{"driver": "blkdebug", "node-name": "i3", "image": {"driver": "null-co"}, "inject-error": [{"state": 1}]}""",
        """{"driver": "blkdebug", "node-name": "i4", "image": {"driver": "null-co"}, "set-state": [{"event": "read_aio"}]}""",
        """{"driver": "blkdebug", "node-name": "i5", "image": {"driver": "null-co"}, "inject-error": [{"event": "read_aio", "once": "yes"}]}""",
        """{"driver": "blkdebug", "node-name": "i6", "image": {"driver": "null-co"}, "inject-error": {"event": "read_aio"}}""",
        """{"driver": "blkdebug", "node-name": "i7", "image": {"driver": "null-co"}, "set-state": [{"event": "read_aio", "new_state": 2, "x": 1}]}""",
    ];

    [SkippableFact]
    public async Task Blockdev_add_takes_and_refuses_blkdebug_rules_as_qemu_storage_daemon_does()
    {
        var configs = WriteConfigs();
        var theirs = await AnswersAsync(DifferentialDaemon.Qsd(), configs);
        var ours = await AnswersAsync(DifferentialDaemon.Ours(), configs);

        Assert.Equal(theirs, ours);
        Assert.Equal("ok", theirs[0]);
        Assert.Contains("GenericError: invalid parameter value: nope", ours);
    }

    [SkippableTheory]
    [InlineData("inject-error.0.event=nope")]
    [InlineData("inject-error.0.state=1")]
    [InlineData("inject-error.0.event=read_aio,inject-error.0.errno=x")]
    [InlineData("inject-error.0.event=read_aio,inject-error.0.iotype=foo")]
    [InlineData("inject-error.0.event=read_aio,inject-error.0.foo=1")]
    [InlineData("set-state.0.event=read_aio")]
    [InlineData("inject-error.x.event=read_aio")]
    [InlineData("inject-error.0.event=read_aio,inject-error.2.event=read_aio")]
    [InlineData("config=CONFIGS/bad-event")]
    [InlineData("config=CONFIGS/missing")]
    [InlineData("config=CONFIGS/bad-key")]
    public Task Blkdebug_rules_on_the_command_line_are_refused_as_qemu_storage_daemon_refuses_them(string rules) =>
        ServeBlockdevOptionDifferentialTests.AssertRefusedAlikeAsync(
            $"driver=blkdebug,node-name=dbg,image.driver=null-co,{rules.Replace("CONFIGS", WriteConfigs(), StringComparison.Ordinal)}");

    [SkippableFact]
    public async Task A_rule_on_the_none_event_is_armed_when_the_node_is_made_as_on_qemu_storage_daemon()
    {
        // QEMU raises "none" once, at the end of blkdebug's open: the rule fails the very first read of the
        // export (nothing above blkdebug raises an event) and, being once, only that one.
        var outputs = await QemuIoOverBlkdebugAsync(new JsonObject { ["event"] = "none", ["iotype"] = "read", ["once"] = true }, async uri =>
        {
            // One connection per request: QEMU 7.2's server drops a client whose structured read fails.
            var output = "";
            foreach (var command in new[] { "read -P 0x5a 0 64k", "read -P 0x5a 0 64k", "write 0 64k" })
            {
                var io = await ExternalTool.RunAsync("qemu-io", ["-f", "raw", "-c", command, uri]);
                output += $"{io.ExitCode}: {io.StandardOutput}{io.StandardError}";
            }

            return output;
        });

        Assert.Equal(outputs["qsd"], outputs["ours"]);
        Assert.Matches(@"^1: read failed: Input/output error\n0: read 65536/65536 bytes at offset 0\n.*\n0: wrote 65536/65536 bytes at offset 0\n", outputs["ours"]);
    }

    [SkippableFact]
    public async Task A_failed_read_leaves_the_client_connected_where_qemu_storage_daemon_drops_it()
    {
        // A deliberate difference. QEMU 7.2's server treats a read error inside a structured reply as a failure
        // to send and disconnects the client ("Disconnect client, due to: Failed to send reply: reading from
        // file failed"), so every later request of that client fails too. The NBD protocol has an error chunk
        // for this: ours sends it and serves the client's next requests.
        var outputs = await QemuIoOverBlkdebugAsync(new JsonObject { ["event"] = "none", ["iotype"] = "read", ["sector"] = 0 }, async uri =>
        {
            var io = await ExternalTool.RunAsync("qemu-io", ["-f", "raw", "-c", "read 0 64k", "-c", "read -P 0x5a 512k 64k", "-c", "write 512k 64k", uri]);
            return io.StandardOutput + io.StandardError;
        });

        Assert.Equal("read failed: Input/output error\nread failed: Input/output error\nwrite failed: Input/output error\n", outputs["qsd"]);
        Assert.Matches(@"^read failed: Input/output error\nread 65536/65536 bytes at offset 524288\n.*\nwrote 65536/65536 bytes at offset 524288\n", outputs["ours"]);
    }

    /// <summary>
    /// On each daemon: a 1 MiB raw file of 0x5a under a blkdebug node with <paramref name="injectError"/>, exported;
    /// <paramref name="io"/> given the export's URI. Returns its output per daemon, qemu-io's timings made alike.
    /// </summary>
    async Task<Dictionary<string, string>> QemuIoOverBlkdebugAsync(JsonObject injectError, Func<string, Task<string>> io)
    {
        var rule = new JsonObject { ["driver"] = "blkdebug", ["node-name"] = "dbg", ["image"] = "file", ["inject-error"] = new JsonArray(injectError) };
        var outputs = new Dictionary<string, string>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Path.Combine(_dir.Path, daemon.Name);
            Directory.CreateDirectory(dir);
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", $"{dir}/disk.raw", "1M");
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", $"{dir}/disk.raw");
            string[] blockdevs = ["--blockdev", $"driver=file,node-name=file,filename={dir}/disk.raw", "--blockdev", rule.ToJsonString()];
            await daemon.RunAsync(dir, blockdevs, "dbg", async (_, uri) => outputs[daemon.Name] = WithoutTimings(await io(uri)));
        }

        return outputs;
    }

    /// <summary>qemu-io's output with its timing lines ("64 KiB, 1 ops; 00.02 sec (...)") made alike.</summary>
    static string WithoutTimings(string output) => Regex.Replace(output, @"[^\n]* ops; [^\n]*", "(timing)");

    async Task<List<string>> AnswersAsync(DifferentialDaemon daemon, string configs)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var answers = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var arguments in BlockdevAdds(configs))
            {
                var reply = await qmp.CommandAsync("blockdev-add", JsonNode.Parse(arguments)!.AsObject());
                answers.Add(reply["error"] is { } error ? $"{(string?)error["class"]}: {(string?)error["desc"]}" : "ok");
            }
        });
        return answers;
    }
}
