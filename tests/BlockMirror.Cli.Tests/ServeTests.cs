using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror serve</c> as a process: its monitor under bad input (each mistake answered, nothing
/// changed, other clients unaffected), its command line, and its shutdown.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServeTests : IAsyncLifetime
{
    readonly TempDirectory _dir = new("blockmirror-serve-");
    Process _daemon = null!;
    Task<string> _stderr = null!;

    string Socket => _dir.File("qmp.sock");

    public async Task InitializeAsync()
    {
        await File.WriteAllBytesAsync(_dir.File("disk.raw"), new byte[4 << 20]);
        _daemon = StartServe(
            "--blockdev", $"driver=file,node-name=file0,filename={_dir.File("disk.raw")}",
            "--blockdev", "{\"driver\": \"raw\", \"node-name\": \"disk\", \"file\": \"file0\"}",
            "--chardev", $"socket,id=mon0,path={Socket},server=on,wait=off",
            "--monitor", "mon0",
            "--pidfile", _dir.File("pid"));
        _stderr = _daemon.StandardError.ReadToEndAsync();
        await using var probe = await QmpClient.ConnectAsync(Socket);
    }

    public async Task DisposeAsync()
    {
        if (!_daemon.HasExited)
        {
            _daemon.Kill(entireProcessTree: true);
        }

        await _daemon.WaitForExitAsync();
        _daemon.Dispose();
        _dir.Dispose();
    }

    static Process StartServe(params string[] arguments)
    {
        return Process.Start(BlockMirrorCli.StartInfo(["serve", .. arguments]))!;
    }

    static string ErrorOf(JsonObject reply) =>
        reply["error"] is { } error ? $"{error["class"]}: {error["desc"]}" : throw new InvalidOperationException($"expected an error, got {reply.ToJsonString()}");

    public static TheoryData<string, JsonObject?, string> BadCommands => new()
    {
        { "no-such-command", null, "CommandNotFound: The command no-such-command has not been found" },
        { "blockdev-mirror", new JsonObject { ["device"] = "disk", ["target"] = "disk", ["sync"] = "full", ["speed"] = "fast" }, "GenericError: Invalid parameter type for 'speed', expected: integer" },
        { "blockdev-mirror", new JsonObject { ["device"] = "disk", ["sync"] = "full" }, "GenericError: Parameter 'target' is missing" },
        { "blockdev-mirror", new JsonObject { ["device"] = "disk", ["target"] = "disk", ["sync"] = "sideways" }, "GenericError: Parameter 'sync' does not accept value 'sideways'" },
        { "blockdev-mirror", new JsonObject { ["device"] = "disk", ["target"] = "disk", ["sync"] = "full", ["colour"] = "red" }, "GenericError: Parameter 'colour' is unexpected" },
        { "blockdev-mirror", new JsonObject { ["device"] = "nope", ["target"] = "disk", ["sync"] = "full" }, "GenericError: Cannot find device='nope' nor node-name='nope'" },
        { "blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "disk", ["filename"] = "/nonexistent" }, "GenericError: Duplicate nodes with node-name='disk'" },
        { "blockdev-add", new JsonObject { ["driver"] = "vmdk", ["node-name"] = "x" }, "GenericError: Parameter 'driver' does not accept value 'vmdk'" },
        // QEMU's words for a size its driver reads; qemu-storage-daemon 7.2 says them and then aborts (error_abort).
        { "blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "x", ["size"] = -1 }, "GenericError: Parameter 'size' expects a non-negative number below 2^64" },
        { "block-job-pause", new JsonObject { ["device"] = "job0" }, "DeviceNotActive: Block job 'job0' not found" },
        { "job-dismiss", new JsonObject { ["id"] = "job0" }, "GenericError: Job not found" },
        { "blockdev-del", new JsonObject { ["node-name"] = "file0" }, "GenericError: Block device file0 is in use" },
        { "qmp_capabilities", null, "CommandNotFound: Capabilities negotiation is already complete, command ignored" },
    };

    [Theory]
    [MemberData(nameof(BadCommands))]
    public async Task A_bad_command_gets_qemus_error_and_changes_nothing(string command, JsonObject? arguments, string error)
    {
        await using var qmp = await QmpClient.ConnectAsync(Socket);
        var before = (await qmp.ExecuteAsync("query-named-block-nodes"))!.ToJsonString();

        var reply = await qmp.CommandAsync(command, arguments);

        Assert.Equal(error, ErrorOf(reply));
        Assert.Equal(before, (await qmp.ExecuteAsync("query-named-block-nodes"))!.ToJsonString());
        Assert.Empty(qmp.Events);
    }

    [Fact]
    public async Task A_verb_in_the_wrong_state_is_refused_with_the_state_tables_words()
    {
        await using var qmp = await QmpClient.ConnectAsync(Socket);
        await File.WriteAllBytesAsync(_dir.File("target.raw"), new byte[4 << 20]);
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "tfile", ["filename"] = _dir.File("target.raw") });
        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "raw", ["node-name"] = "target", ["file"] = "tfile" });
        await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "disk", ["target"] = "target", ["sync"] = "full", ["auto-dismiss"] = false });
        await qmp.WaitEventAsync("BLOCK_JOB_READY");
        await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
        await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "concluded");

        var reply = await qmp.CommandAsync("block-job-complete", new JsonObject { ["device"] = "job0" });

        Assert.Equal("GenericError: Job 'job0' in state 'concluded' cannot accept command verb 'complete'", ErrorOf(reply));
        await qmp.ExecuteAsync("job-dismiss", new JsonObject { ["id"] = "job0" });
    }

    [Fact]
    public async Task Drive_mirror_creates_the_target_and_job_verbs_drive_it_to_the_end()
    {
        await using var qmp = await QmpClient.ConnectAsync(Socket);
        var target = _dir.File("copy.raw");

        await qmp.ExecuteAsync("drive-mirror", new JsonObject
        {
            ["job-id"] = "m", ["device"] = "disk", ["target"] = target, ["format"] = "raw", ["sync"] = "full",
            ["mode"] = "absolute-paths", ["auto-finalize"] = false, ["speed"] = 1 << 30,
        });
        await qmp.WaitEventAsync("BLOCK_JOB_READY");
        var jobs = (await qmp.ExecuteAsync("query-jobs"))!.AsArray();
        Assert.Equal("ready", (string?)jobs.Single()!["status"]);
        await qmp.ExecuteAsync("job-pause", new JsonObject { ["id"] = "m" });
        await qmp.ExecuteAsync("job-resume", new JsonObject { ["id"] = "m" });
        await qmp.ExecuteAsync("job-complete", new JsonObject { ["id"] = "m" });
        await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "pending");
        await qmp.ExecuteAsync("job-finalize", new JsonObject { ["id"] = "m" });
        await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "null");

        Assert.Equal(await File.ReadAllBytesAsync(_dir.File("disk.raw")), await File.ReadAllBytesAsync(target));
    }

    [Fact]
    public async Task Malformed_input_is_answered_and_the_monitor_stays_in_step()
    {
        await using var qmp = await QmpClient.ConnectAsync(Socket);

        await qmp.SendRawAsync("{\"execute\": \"query-version\",, }\n");
        Assert.StartsWith("GenericError: JSON parse error", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(10))), StringComparison.Ordinal);
        await qmp.SendRawAsync("[1, 2, 3]\n");
        Assert.Equal("GenericError: QMP input must be a JSON object", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(10))));
        await qmp.SendRawAsync("{\"arguments\": {}}\n");
        Assert.Equal("GenericError: QMP input lacks member 'execute'", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(10))));
        await qmp.SendRawAsync("{\"execute\": 42}\n");
        Assert.Equal("GenericError: QMP input member 'execute' must be a string", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(10))));
        await qmp.SendRawAsync("{\"execute\": \"query-version\", \"arguments\": []}\n");
        Assert.Equal("GenericError: QMP input member 'arguments' must be an object", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(10))));

        var version = await qmp.ExecuteAsync("query-version");
        Assert.Equal(7, (int)version!["qemu"]!["major"]!);
    }

    [Fact]
    public async Task A_100_MiB_line_gets_qemus_errors_and_memory_stays_bounded()
    {
        await using var qmp = await QmpClient.ConnectAsync(Socket);
        var chunk = Encoding.ASCII.GetBytes(new string('x', 1 << 20));

        await qmp.SendRawAsync("{\"execute\": \"query-version\", \"arguments\": {\"pad\": \"");
        for (var i = 0; i < 100; i++)
        {
            await qmp.SendRawAsync(chunk);
        }

        await qmp.SendRawAsync("\"}}\n");

        // QEMU's lexer gives up on the string at 64 MiB and reads the rest afresh: a keyword of 36 MiB of
        // letters (its error cut to 1 KiB), then a stray quote.
        Assert.Equal("GenericError: JSON token size limit exceeded", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(60))));
        Assert.StartsWith("GenericError: JSON parse error, invalid keyword 'xxx", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(60))), StringComparison.Ordinal);
        Assert.StartsWith("GenericError: JSON parse error, stray", ErrorOf(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(60))), StringComparison.Ordinal);
        await using var other = await QmpClient.ConnectAsync(Socket);
        Assert.NotNull(await other.ExecuteAsync("query-version"));
        Assert.NotNull(await qmp.ExecuteAsync("query-version"));
        _daemon.Refresh();
        Assert.True(_daemon.PeakWorkingSet64 < 200L << 20, $"peak working set {_daemon.PeakWorkingSet64 >> 20} MiB");
    }

    [Fact]
    public async Task Commands_before_negotiation_are_refused_and_the_greeting_names_qemu_7_2()
    {
        await using var qmp = await QmpClient.ConnectAsync(Socket, negotiate: false);

        Assert.Equal(7, (int)qmp.Greeting["QMP"]!["version"]!["qemu"]!["major"]!);
        Assert.Equal(2, (int)qmp.Greeting["QMP"]!["version"]!["qemu"]!["minor"]!);
        var reply = await qmp.CommandAsync("query-version");
        Assert.Equal("CommandNotFound: Expecting capabilities negotiation with 'qmp_capabilities'", ErrorOf(reply));
        Assert.Equal("c1", (string?)reply["id"]);
    }

    [Fact]
    public async Task Sigterm_shuts_down_cleanly_and_removes_the_pidfile_and_socket()
    {
        Assert.Equal(_daemon.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), (await File.ReadAllTextAsync(_dir.File("pid"))).Trim());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Socket));

        Assert.Equal(0, Kill(_daemon.Id, 15));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await _daemon.WaitForExitAsync(timeout.Token);

        Assert.Equal(0, _daemon.ExitCode);
        Assert.False(File.Exists(_dir.File("pid")));
        Assert.False(File.Exists(Socket));
        Assert.Equal("", (await _stderr).Trim());
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    static extern int Kill(int pid, int signal);

    [Theory]
    [InlineData(new[] { "--bogus" }, "unrecognized option '--bogus'")]
    [InlineData(new[] { "--blockdev", "driver=file" }, "Parameter 'filename' is missing")]
    [InlineData(new[] { "--blockdev", "driver=nbd,node-name=n" }, "Parameter 'server' is missing")]
    [InlineData(new[] { "--blockdev", "driver=null-co,node-name=n,foo=1" }, "Parameter 'foo' is unexpected")]
    [InlineData(new[] { "--blockdev", "driver=null-co,node-name=n,size=big" }, "Parameter 'size' expects integer")]
    [InlineData(new[] { "--blockdev", "driver=file,filename=/nonexistent/x,node-name=a" }, "/nonexistent/x")]
    [InlineData(new[] { "--monitor", "chardev=nope" }, "chardev \"nope\" not found")]
    [InlineData(new[] { "--chardev", "socket,id=m,path=/tmp/x.sock,server=on" }, "wait=on is not supported")]
    [InlineData(new[] { "--export", "type=nbd,id=e,node-name=x" }, "Cannot find device='' nor node-name='x'")]
    public async Task A_bad_command_line_exits_1_with_one_line(string[] arguments, string message)
    {
        var result = await BlockMirrorCli.RunAsync(["serve", .. arguments]);

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.StartsWith("blockmirror serve: ", result.ErrorLines[0], StringComparison.Ordinal);
        Assert.Contains(message, result.ErrorLines[0], StringComparison.Ordinal);
    }
}
