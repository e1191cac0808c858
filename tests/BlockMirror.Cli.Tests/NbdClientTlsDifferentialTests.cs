using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The NBD client's <c>tls-creds</c> / <c>tls-hostname</c> (blockdev-add driver=nbd) on qemu-storage-daemon 7.2 and
/// <c>blockmirror serve</c>, against x509 TLS servers (qemu-nbd, qemu-storage-daemon and our own serve), PSK ones
/// (qemu-nbd and ours) and a plain one: the same answers in the same words, and the data read over TLS is the image's.
/// </summary>
public sealed class NbdClientTlsDifferentialTests : IAsyncLifetime
{
    const int Size = 4 << 20;
    readonly TempDirectory _dir = new("blockmirror-nbd-client-tls-");
    readonly List<Process> _servers = [];
    string _pki = "", _psk = "", _image = "";

    /// <summary>Unix socket of each server, by name.</summary>
    readonly Dictionary<string, string> _sockets = [];

    public async Task InitializeAsync()
    {
        _pki = TlsCertificates.CreateX509(_dir.File("pki"));
        _psk = TlsCertificates.CreatePsk(_dir.File("psk"), ("alice", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        _image = _dir.File("image.raw");
        var content = new byte[Size];
        new Random(16).NextBytes(content.AsSpan(0, 1 << 20));
        await File.WriteAllBytesAsync(_image, content);
    }

    /// <summary>Starts the servers (each on its own copy of the image, read-only) once the tools are known to exist.</summary>
    async Task StartServersAsync()
    {
        var qemuNbd = ExternalTool.Require("qemu-nbd");
        var qsd = DifferentialDaemon.Qsd().Program;
        var serverObject = $"tls-creds-x509,id=s,dir={_pki},endpoint=server";
        foreach (var name in new[] { "qemu-nbd", "qsd", "ours", "plain", "qemu-nbd-psk", "ours-psk" })
        {
            var copy = _dir.File($"{name}.raw");
            File.Copy(_image, copy);
            var socket = _dir.File($"{name}.sock");
            _sockets[name] = socket;
            ProcessStartInfo start = name switch
            {
                "qemu-nbd" => Tool(qemuNbd, "--object", serverObject, "--tls-creds", "s", "-f", "raw", "-x", "disk", "-e", "4", "-k", socket, "-t", "-r", copy),
                "plain" => Tool(qemuNbd, "-f", "raw", "-x", "disk", "-e", "4", "-k", socket, "-t", "-r", copy),
                "qemu-nbd-psk" => Tool(qemuNbd, "--object", $"tls-creds-psk,id=s,dir={_psk},endpoint=server", "--tls-creds", "s",
                    "-f", "raw", "-x", "disk", "-e", "4", "-k", socket, "-t", "-r", copy),
                "ours-psk" => BlockMirrorCli.StartInfo(["serve", "--object", $"tls-creds-psk,id=s,dir={_psk},endpoint=server",
                    "--blockdev", $"driver=file,node-name=f,filename={copy},read-only=on",
                    "--nbd-server", $"addr.type=unix,addr.path={socket},tls-creds=s", "--export", "nbd,id=e,node-name=f,name=disk"]),
                "qsd" => Tool(qsd, "--object", serverObject, "--blockdev", $"driver=file,node-name=f,filename={copy},read-only=on",
                    "--nbd-server", $"addr.type=unix,addr.path={socket},tls-creds=s", "--export", "nbd,id=e,node-name=f,name=disk"),
                _ => BlockMirrorCli.StartInfo(["serve", "--object", serverObject, "--blockdev", $"driver=file,node-name=f,filename={copy},read-only=on",
                    "--nbd-server", $"addr.type=unix,addr.path={socket},tls-creds=s", "--export", "nbd,id=e,node-name=f,name=disk"]),
            };
            start.RedirectStandardOutput = start.RedirectStandardError = true;
            _servers.Add(Process.Start(start)!);
        }

        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (!_sockets.Values.All(File.Exists))
        {
            await Task.Delay(20, timeout.Token);
        }
    }

    static ProcessStartInfo Tool(string path, params string[] arguments)
    {
        var start = new ProcessStartInfo(path) { UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        return start;
    }

    public async Task DisposeAsync()
    {
        foreach (var server in _servers)
        {
            if (!server.HasExited)
            {
                server.Kill(entireProcessTree: true);
            }

            await server.WaitForExitAsync();
            server.Dispose();
        }

        _dir.Dispose();
    }

    /// <summary>blockdev-add of an NBD node: the server by name, then the TLS members (JSON fragments).</summary>
    (string Node, string Server, string Tls)[] Script() =>
    [
        ("n1", "qemu-nbd", ""),
        ("n1", "qemu-nbd", """, "tls-creds": "nope" """),
        ("n1", "qemu-nbd", """, "tls-creds": "s" """),
        ("n1", "qemu-nbd", """, "tls-creds": "c" """),
        ("n1", "qemu-nbd", """, "tls-creds": "c", "tls-hostname": "elsewhere.example" """),
        ("n1", "plain", """, "tls-creds": "c", "tls-hostname": "localhost" """),
        ("n1", "qemu-nbd", """, "tls-creds": "c", "tls-hostname": "localhost" """),
        ("n2", "qsd", """, "tls-creds": "c", "tls-hostname": "localhost" """),
        ("n3", "ours", """, "tls-creds": "c", "tls-hostname": "localhost" """),
        ("n4", "ours", ""),
        ("n5", "qemu-nbd-psk", """, "tls-creds": "p" """),
        ("n6", "ours-psk", """, "tls-creds": "p" """),
    ];

    [SkippableFact]
    public async Task Blockdev_add_nbd_with_tls_creds_answers_as_qemu_storage_daemon_and_reads_the_image_over_TLS()
    {
        var theirs = DifferentialDaemon.Qsd();
        ExternalTool.Require("qemu-img");
        await StartServersAsync();
        var theirAnswers = await RunAsync(theirs);
        var ourAnswers = await RunAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirAnswers, ourAnswers);
        Assert.Contains("n1 qemu-nbd: GenericError: Certificate does not match the hostname elsewhere.example", ourAnswers);
        Assert.Contains("n1 qemu-nbd: GenericError: No hostname for certificate validation", ourAnswers);
        Assert.Contains("n3 ours: ok", ourAnswers);
        Assert.Contains("compare n3: Images are identical.", ourAnswers);
        Assert.Contains("compare n6: Images are identical.", ourAnswers);
    }

    /// <summary>
    /// <c>nbds+unix://</c> names (libnbd's; a deliberate difference: qemu-img 7.2 knows no <c>nbds</c> protocol):
    /// the x509 servers are read over TLS with the certificates directory or QEMU's way (an object's id does not
    /// fit the command line's name, so the directory is the command line's); a plain server, a host name the
    /// certificate lacks and a directory without certificates are refused by name.
    /// </summary>
    [SkippableFact]
    public async Task Nbds_names_are_read_over_TLS_where_qemu_img_knows_no_nbds_protocol()
    {
        ExternalTool.Require("qemu-img");
        await StartServersAsync();
        string Uri(string server, string query) => $"nbds+unix:///disk?socket={_sockets[server]}&{query}";

        foreach (var server in new[] { "qemu-nbd", "qsd", "ours" })
        {
            var read = await BlockMirrorCli.RunAsync(["compare", "-f", "raw", _image, Uri(server, $"tls-certificates={_pki}&tls-hostname=localhost")]);
            Assert.Equal((0, "Images are identical.\n", ""), (read.ExitCode, read.StandardOutput, read.StandardError));
        }

        var name = Uri("qsd", $"tls-certificates={_pki}&tls-hostname=localhost");
        var qemu = await ExternalTool.RunAsync("qemu-img", ["info", name]);
        Assert.Equal((1, $"qemu-img: Could not open '{name}': Unknown protocol 'nbds+unix'\n"), (qemu.ExitCode, qemu.StandardError));

        var plain = await BlockMirrorCli.RunAsync(["info", Uri("plain", $"tls-certificates={_pki}&tls-hostname=localhost")]);
        Assert.NotEqual(0, plain.ExitCode);
        // qemu-nbd without TLS refuses STARTTLS (QEMU's words, checked against qemu-storage-daemon by the blockdev-add test above).
        Assert.True(plain.StandardError.Contains("Denied by server for option 5 (starttls)", StringComparison.Ordinal), plain.StandardError);

        var misnamed = await BlockMirrorCli.RunAsync(["info", Uri("ours", $"tls-certificates={_pki}&tls-hostname=elsewhere.example")]);
        Assert.NotEqual(0, misnamed.ExitCode);
        Assert.Contains("Certificate does not match the hostname elsewhere.example", misnamed.StandardError, StringComparison.Ordinal);

        var empty = Directory.CreateDirectory(_dir.File("no-certificates")).FullName;
        var missing = await BlockMirrorCli.RunAsync(["info", Uri("ours", $"tls-certificates={empty}")]);
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains($"{empty}/ca-cert.pem", missing.StandardError, StringComparison.Ordinal);
    }

    /// <summary>
    /// drive-mirror onto an <c>nbds://</c> export naming TLS credentials made by object-add (<c>tls-creds=c</c>):
    /// the mirror completes over TLS and the export holds the source. (qemu-storage-daemon 7.2 refuses the name:
    /// pinned in NbdUriDriveMirrorDifferentialTests.)
    /// </summary>
    [SkippableFact]
    public async Task Drive_mirror_onto_an_nbds_name_with_tls_creds_copies_over_TLS()
    {
        ExternalTool.Require("qemu-img");
        var target = _dir.File("mirror-target.raw");
        await File.WriteAllBytesAsync(target, new byte[Size]);
        var socket = _dir.File("mirror-target.sock");
        var server = Process.Start(WithOutput(BlockMirrorCli.StartInfo(["serve", "--object", $"tls-creds-x509,id=s,dir={_pki},endpoint=server",
            "--blockdev", $"driver=file,node-name=f,filename={target}",
            "--nbd-server", $"addr.type=unix,addr.path={socket},tls-creds=s", "--export", "nbd,id=e,node-name=f,name=disk,writable=on"])))!;
        _servers.Add(server);
        using (var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            while (!File.Exists(socket))
            {
                await Task.Delay(20, timeout.Token);
            }
        }

        var dir = Directory.CreateDirectory(_dir.File("mirror")).FullName;
        var source = _dir.File("mirror-source.raw");
        File.Copy(_image, source);
        var events = await DifferentialDaemon.Ours().RunAsync(dir, ["--blockdev", $"driver=file,node-name=disk,filename={source}"], "disk", async (qmp, _) =>
        {
            await qmp.ExecuteAsync("object-add", JsonNode.Parse($$"""{"qom-type": "tls-creds-x509", "id": "c", "dir": "{{_pki}}", "endpoint": "client"}""")!.AsObject());
            await qmp.ExecuteAsync("drive-mirror", JsonNode.Parse($$"""
                {"job-id": "m", "device": "disk", "sync": "full", "mode": "existing", "format": "raw",
                 "target": "nbds+unix:///disk?socket={{socket}}&tls-creds=c&tls-hostname=localhost"}
                """)!.AsObject());
            await qmp.WaitEventAsync("BLOCK_JOB_READY", timeout: TimeSpan.FromSeconds(60));
            await qmp.ExecuteAsync("block-job-complete", JsonNode.Parse("""{"device": "m"}""")!.AsObject());
            await qmp.WaitEventAsync("BLOCK_JOB_COMPLETED", timeout: TimeSpan.FromSeconds(60));
        });
        Assert.Contains(events, e => e.StartsWith("BLOCK_JOB_COMPLETED", StringComparison.Ordinal));
        server.Kill(entireProcessTree: true);
        await server.WaitForExitAsync();
        Assert.Equal(await File.ReadAllBytesAsync(_image), await File.ReadAllBytesAsync(target));
    }

    static ProcessStartInfo WithOutput(ProcessStartInfo start)
    {
        start.RedirectStandardOutput = start.RedirectStandardError = true;
        return start;
    }

    async Task<List<string>> RunAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var answers = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var (id, endpoint) in new[] { ("c", "client"), ("s", "server") })
            {
                await qmp.ExecuteAsync("object-add", JsonNode.Parse($$"""{"qom-type": "tls-creds-x509", "id": "{{id}}", "dir": "{{_pki}}", "endpoint": "{{endpoint}}"}""")!.AsObject());
            }

            await qmp.ExecuteAsync("object-add", JsonNode.Parse($$"""{"qom-type": "tls-creds-psk", "id": "p", "dir": "{{_psk}}", "endpoint": "client", "username": "alice"}""")!.AsObject());

            foreach (var (node, server, tls) in Script())
            {
                var arguments = JsonNode.Parse($$"""
                    {"driver": "nbd", "node-name": "{{node}}", "read-only": true, "export": "disk",
                     "server": {"type": "unix", "path": "{{_sockets[server]}}"}{{tls}}}
                    """)!.AsObject();
                var reply = await qmp.CommandAsync("blockdev-add", arguments);
                answers.Add(reply["error"] is { } error
                    ? $"{node} {server}: {(string?)error["class"]}: {((string?)error["desc"])!.Replace(_sockets[server], "SOCKET", StringComparison.Ordinal)}"
                    : $"{node} {server}: ok");
            }

            // What the TLS-backed nodes read is the image: exported again by the daemon and compared by qemu-img.
            var exportSocket = Path.Combine(dir, "nbd.sock");
            foreach (var node in new[] { "n1", "n2", "n3", "n5", "n6" })
            {
                await qmp.ExecuteAsync("block-export-add", JsonNode.Parse($$"""{"type": "nbd", "id": "x{{node}}", "node-name": "{{node}}", "name": "{{node}}"}""")!.AsObject());
                var compare = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", _image, $"nbd+unix:///{node}?socket={exportSocket}"]);
                answers.Add($"compare {node}: {compare.StandardOutput.Trim()}{compare.StandardError.Trim()}");
            }
        });
        return answers;
    }
}
