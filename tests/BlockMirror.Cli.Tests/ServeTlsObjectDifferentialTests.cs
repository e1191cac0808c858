using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// TLS credentials objects on qemu-storage-daemon 7.2 and <c>blockmirror serve</c>: <c>object-add</c> /
/// <c>object-del</c> over QMP, <c>--object</c> on the command line, and <c>tls-creds</c> on the NBD server,
/// given the same certificates (<see cref="TlsCertificates"/>); both answer alike, in the same words.
/// </summary>
public sealed class ServeTlsObjectDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-serve-tls-");
    readonly string _pki;
    readonly string _psk;

    public ServeTlsObjectDifferentialTests()
    {
        _pki = TlsCertificates.CreateX509(_dir.File("pki"));
        _psk = TlsCertificates.CreatePsk(_dir.File("psk"), ("alice", [1, 2, 3, 4, 5, 6, 7, 8]));
        Directory.CreateDirectory(_dir.File("badkey"));
        File.WriteAllText(_dir.File("badkey/keys.psk"), "qemu:not-hex\n");
    }

    public void Dispose() => _dir.Dispose();

    /// <summary>object-add, object-del and nbd-server-start arguments, in order, with what each answered.</summary>
    (string Command, string Arguments)[] Script() =>
    [
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "srv", "dir": "{{_pki}}", "endpoint": "server"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "srv", "dir": "{{_pki}}", "endpoint": "server"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "cli", "dir": "{{_pki}}"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_dir.Path}}/none", "endpoint": "server"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_psk}}", "endpoint": "client"}"""),
        ("object-add", """{"qom-type": "tls-creds-x509", "id": "x1", "endpoint": "server"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_pki}}", "endpoint": "bad"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_pki}}", "endpoint": "bad", "bogus": 1}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_pki}}", "verify-peer": "yes"}"""),
        ("object-add", """{"qom-type": "tls-creds-x509", "id": "x1", "dir": 5}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_pki}}", "bogus": 1}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "dir": "{{_pki}}"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "1bad", "dir": "{{_pki}}"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_pki}}", "loaded": true}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-x509", "id": "x1", "dir": "{{_pki}}", "endpoint": "server", "passwordid": "sec0"}"""),
        ("object-add", """{"qom-type": "nope", "id": "x1"}"""),
        ("object-add", """{"id": "x1"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-psk", "id": "p1", "dir": "{{_pki}}", "endpoint": "server"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-psk", "id": "p1", "dir": "{{_psk}}", "endpoint": "client", "username": "bob"}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-psk", "id": "p1", "dir": "{{_psk}}", "endpoint": "server", "sanity-check": true}"""),
        ("object-add", $$"""{"qom-type": "tls-creds-psk", "id": "p1", "dir": "{{_psk}}", "endpoint": "client", "username": "alice"}"""),
        ("nbd-server-stop", "{}"),
        ("nbd-server-start", """{"addr": {"type": "unix", "data": {"path": "SOCKET"}}, "tls-creds": "nope"}"""),
        ("nbd-server-start", """{"addr": {"type": "unix", "data": {"path": "SOCKET"}}, "tls-creds": "cli"}"""),
        ("nbd-server-start", """{"addr": {"type": "unix", "data": {"path": "SOCKET"}}, "tls-creds": "srv"}"""),
        // In use by the NBD server: deleted all the same (the server keeps its reference), as in QEMU.
        ("object-del", """{"id": "srv"}"""),
        ("object-del", """{"id": "srv"}"""),
        ("object-del", """{}"""),
        ("object-del", """{"id": "cli", "x": 1}"""),
        ("object-del", """{"id": "cli"}"""),
        ("nbd-server-stop", "{}"),
    ];

    [SkippableFact]
    public async Task Object_add_object_del_and_nbd_server_start_tls_creds_answer_as_qemu_storage_daemon()
    {
        var theirs = await RunScriptAsync(DifferentialDaemon.Qsd());
        var ours = await RunScriptAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirs, ours);
        Assert.Contains("object-add: GenericError: attempt to add duplicate property 'srv' to object (type 'container')", ours);
        Assert.Contains("nbd-server-start: GenericError: Expected TLS credentials for a server endpoint", ours);
        Assert.Contains($"object-add: GenericError: Unable to access credentials {_dir.Path}/none/ca-cert.pem: No such file or directory", ours);
    }

    async Task<List<string>> RunScriptAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var answers = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var (command, arguments) in Script())
            {
                var reply = await qmp.CommandAsync(command, JsonNode.Parse(arguments.Replace("SOCKET", $"{dir}/tls.sock", StringComparison.Ordinal))!.AsObject());
                answers.Add(reply["error"] is { } error ? $"{command}: {(string?)error["class"]}: {(string?)error["desc"]}" : $"{command}: ok");
            }
        });
        return answers;
    }

    [SkippableFact]
    public async Task Object_on_the_command_line_is_refused_as_qemu_storage_daemon_refuses_it()
    {
        string[][] cases =
        [
            ["--object", $"tls-creds-x509,id=t0,dir={_dir.Path}/none,endpoint=server"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=bogus"],
            ["--object", "tls-creds-x509,id=t0,endpoint=server"],
            ["--object", $"tls-creds-x509,dir={_pki},endpoint=server"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=server,verify-peer=maybe"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=server,bogus=1"],
            ["--object", $"tls-creds-psk,id=t0,dir={_pki},endpoint=server"],
            ["--object", "foo,id=x"],
            ["--object", $"tls-creds-psk,id=t0,dir={_psk},endpoint=server,username=alice"],
            ["--object", $"tls-creds-psk,id=t0,dir={_psk},endpoint=client"],
            ["--object", $"tls-creds-psk,id=t0,dir={_dir.Path}/badkey,endpoint=client"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=server", "--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=server"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=client", "--nbd-server", $"addr.type=unix,addr.path={_dir.Path}/n.sock,tls-creds=t0"],
            ["--nbd-server", $"addr.type=unix,addr.path={_dir.Path}/n.sock,tls-creds=nope"],
        ];
        foreach (var options in cases)
        {
            await ServeBlockdevOptionDifferentialTests.AssertOptionsRefusedAlikeAsync(options);
        }
    }

    [SkippableFact]
    public async Task What_we_refuse_deliberately_where_qemu_storage_daemon_accepts()
    {
        // GnuTLS's anonymous credentials, its priority strings and authz objects have no SslStream equivalent.
        string[][] cases =
        [
            ["--object", "tls-creds-anon,id=t0,endpoint=server"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=server,priority=NORMAL"],
            ["--object", $"tls-creds-x509,id=t0,dir={_pki},endpoint=server", "--nbd-server", $"addr.type=unix,addr.path={_dir.Path}/a.sock,tls-creds=t0,tls-authz=authz0"],
        ];
        string[] expected =
        [
            "object type 'tls-creds-anon' is not supported",
            "TLS priority strings ('priority') are not supported",
            "TLS client authorization ('tls-authz') is not supported",
        ];
        for (var i = 0; i < cases.Length; i++)
        {
            var ours = await BlockMirrorCli.RunAsync(["serve", .. cases[i]]);
            Assert.Equal(1, ours.ExitCode);
            Assert.EndsWith(expected[i], ours.ErrorLines[0], StringComparison.Ordinal);
        }
    }

    [SkippableFact]
    public async Task Qemu_img_reads_both_daemons_exports_over_TLS_and_a_plain_client_is_refused_by_both_alike()
    {
        var theirs = await ReadOverTlsAsync(DifferentialDaemon.Qsd());
        var ours = await ReadOverTlsAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirs, ours);
        Assert.Equal("virtual size: 4 MiB (4194304 bytes)", ours[0]);
        Assert.Contains("TLS negotiation required before option 7 (go)", ours[1], StringComparison.Ordinal);
    }

    /// <summary>The export's size as qemu-img sees it over TLS, then what a plain qemu-img says.</summary>
    async Task<List<string>> ReadOverTlsAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, $"serve-{daemon.Name}");
        Directory.CreateDirectory(dir);
        var socket = $"{dir}/tls.sock";
        var seen = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk,size=4194304,read-zeroes=on"], "disk", async (qmp, _) =>
        {
            await qmp.ExecuteAsync("nbd-server-stop");
            await qmp.ExecuteAsync("object-add", JsonNode.Parse($$"""{"qom-type": "tls-creds-x509", "id": "srv", "dir": "{{_pki}}", "endpoint": "server"}""")!.AsObject());
            await qmp.ExecuteAsync("nbd-server-start", JsonNode.Parse($$$"""{"addr": {"type": "unix", "data": {"path": "{{{socket}}}"}}, "tls-creds": "srv"}""")!.AsObject());
            await qmp.ExecuteAsync("block-export-add", JsonNode.Parse("""{"type": "nbd", "id": "e", "node-name": "disk", "name": "disk"}""")!.AsObject());
            var opts = $"driver=nbd,server.type=unix,server.path={socket},export=disk";
            // Over a Unix socket QEMU checks the certificate against tls-hostname (it has no host name otherwise).
            var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--object", $"tls-creds-x509,id=c,dir={_pki},endpoint=client",
                "--image-opts", $"{opts},tls-creds=c,tls-hostname=localhost");
            seen.Add(info.Split('\n').First(l => l.StartsWith("virtual size", StringComparison.Ordinal)));
            var plain = await ExternalTool.RunAsync("qemu-img", ["info", "--image-opts", opts]);
            seen.Add($"{plain.ExitCode} {plain.StandardError.Replace(socket, "SOCKET", StringComparison.Ordinal).Trim()}");
        });
        return seen;
    }
}
