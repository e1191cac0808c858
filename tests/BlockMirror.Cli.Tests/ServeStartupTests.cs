using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using BlockMirror.Nbd.Client;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror serve</c> start-up: nothing is served before every option is applied, and the pid file
/// appears only then (qemu-storage-daemon's order). The monitor comes first on the command line and many
/// nodes after it, so a daemon that greeted as soon as its socket existed would be caught with nodes, the
/// NBD server or the export still missing (it was: <c>Cannot find device='drive0'</c>).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServeStartupTests : IDisposable
{
    const int Nodes = 32;
    const int Runs = 3;

    readonly TempDirectory _dir = new("blockmirror-startup-");

    public void Dispose() => _dir.Dispose();

    /// <summary>The monitor first, then the nodes, the NBD server, the export and the pid file.</summary>
    string[] Arguments(string run) =>
    [
        "--chardev", $"socket,id=mon0,path={_dir.File($"{run}-qmp.sock")},server=on,wait=off",
        "--monitor", "chardev=mon0",
        .. Enumerable.Range(0, Nodes).SelectMany(i => new[] { "--blockdev", $"driver=null-co,node-name=n{i},size=1048576" }),
        "--blockdev", $"driver=file,node-name=file0,filename={_dir.File("disk.raw")}",
        "--blockdev", "driver=raw,node-name=drive0,file=file0",
        "--nbd-server", $"addr.type=unix,addr.path={_dir.File($"{run}-nbd.sock")}",
        "--export", "type=nbd,id=exp0,node-name=drive0,name=disk",
        "--pidfile", _dir.File($"{run}-pid"),
    ];

    [Fact]
    public async Task A_client_that_connects_as_soon_as_the_monitor_socket_exists_finds_everything_applied()
    {
        await File.WriteAllBytesAsync(_dir.File("disk.raw"), new byte[1 << 20]);
        for (var run = 0; run < Runs; run++)
        {
            var name = $"r{run}";
            using var daemon = Process.Start(BlockMirrorCli.StartInfo(["serve", .. Arguments(name)]))!;
            var stderr = daemon.StandardError.ReadToEndAsync();
            try
            {
                // Connect the moment the socket exists; the greeting may only come once all is in place.
                var socket = _dir.File($"{name}-qmp.sock");
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                while (!File.Exists(socket))
                {
                    Assert.False(daemon.HasExited, $"serve exited: {(daemon.HasExited ? await stderr : "")}");
                    Assert.True(DateTime.UtcNow < deadline, "no monitor socket within 30 s");
                    await Task.Delay(1);
                }

                await using var qmp = await QmpClient.ConnectAsync(socket);

                var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray().Select(n => (string)n!["node-name"]!).ToHashSet();
                Assert.Contains("drive0", nodes);
                Assert.Equal(Nodes + 2, nodes.Count);
                var exports = (await qmp.ExecuteAsync("query-block-exports"))!.AsArray();
                Assert.Equal("exp0", (string?)exports.Single()!["id"]);
                Assert.Equal(daemon.Id.ToString(CultureInfo.InvariantCulture), (await File.ReadAllTextAsync(_dir.File($"{name}-pid"))).Trim());
                Assert.Equal(1UL << 20, await NbdExportSizeAsync(_dir.File($"{name}-nbd.sock")));
                await qmp.ExecuteAsync("quit");
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await daemon.WaitForExitAsync(timeout.Token);
                Assert.True(daemon.ExitCode == 0, await stderr);
            }
            finally
            {
                if (!daemon.HasExited)
                {
                    daemon.Kill(entireProcessTree: true);
                }

                await daemon.WaitForExitAsync();
            }
        }
    }

    [Fact]
    public async Task The_pid_file_appears_only_once_the_monitor_and_the_export_are_served()
    {
        await File.WriteAllBytesAsync(_dir.File("disk.raw"), new byte[1 << 20]);
        using var daemon = Process.Start(BlockMirrorCli.StartInfo(["serve", .. Arguments("p")]))!;
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            var pidfile = _dir.File("p-pid");
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (!File.Exists(pidfile) || new FileInfo(pidfile).Length == 0)
            {
                Assert.False(daemon.HasExited, $"serve exited: {(daemon.HasExited ? await stderr : "")}");
                Assert.True(DateTime.UtcNow < deadline, "no pid file within 30 s");
                await Task.Delay(10);
            }

            // The NBD server answers without waiting for anything else, and the monitor sees the export.
            Assert.Equal(1UL << 20, await NbdExportSizeAsync(_dir.File("p-nbd.sock")));
            await using var qmp = await QmpClient.ConnectAsync(_dir.File("p-qmp.sock"), TimeSpan.Zero);
            Assert.Single((await qmp.ExecuteAsync("query-block-exports"))!.AsArray());
        }
        finally
        {
            daemon.Kill(entireProcessTree: true);
            await daemon.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task No_client_is_greeted_before_the_pid_file_is_written()
    {
        // The pid file is a FIFO: writing it blocks until this test reads it, so the daemon stands still
        // between applying its options and serving, for as long as the test likes.
        await File.WriteAllBytesAsync(_dir.File("disk.raw"), new byte[1 << 20]);
        var pidfile = _dir.File("g-pid");
        Assert.Equal(0, MakeFifo(pidfile, 0x180));
        using var daemon = Process.Start(BlockMirrorCli.StartInfo(["serve", .. Arguments("g")]))!;
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            var greeting = QmpClient.ConnectAsync(_dir.File("g-qmp.sock"), negotiate: false);
            var winner = await Task.WhenAny(greeting, daemon.WaitForExitAsync(), Task.Delay(TimeSpan.FromSeconds(2)));
            Assert.False(winner == greeting, "the monitor greeted a client before the pid file was written");
            Assert.False(daemon.HasExited, $"serve exited: {(daemon.HasExited ? await stderr : "")}");

            var pid = await File.ReadAllTextAsync(pidfile);

            Assert.Equal(daemon.Id.ToString(CultureInfo.InvariantCulture), pid.Trim());
            await using var qmp = await greeting;
            await qmp.ExecuteAsync("qmp_capabilities");
            Assert.Single((await qmp.ExecuteAsync("query-block-exports"))!.AsArray());
        }
        finally
        {
            daemon.Kill(entireProcessTree: true);
            await daemon.WaitForExitAsync();
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    internal static extern int MakeFifo([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, uint mode);

    [Fact]
    public async Task A_socket_in_use_is_refused_at_its_option_before_later_options_are_applied()
    {
        var taken = _dir.File("taken.sock");
        using var holder = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        holder.Bind(new UnixDomainSocketEndPoint(taken));
        // Listening: a socket file nobody listens on is stale, and serve would replace it.
        holder.Listen(1);

        var result = await BlockMirrorCli.RunAsync("serve",
            "--chardev", $"socket,id=m,path={taken},server=on,wait=off", "--monitor", "m",
            "--blockdev", $"driver=file,node-name=f,filename={_dir.File("created-later.raw")}");

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.StartsWith("blockmirror serve: --monitor m: Failed to bind socket", result.ErrorLines[0], StringComparison.Ordinal);
    }

    /// <summary>
    /// A daemon killed outright leaves its socket files behind. The same command run again (systemd's restart, a
    /// user's second try) must come up on them: qemu-storage-daemon removes whatever is at the path, ours a socket
    /// file nobody listens on (a regular file there is refused: <c>SocketListenerTests</c>).
    /// </summary>
    [SkippableFact]
    public async Task A_daemon_killed_outright_is_restarted_on_the_socket_files_it_left()
    {
        await File.WriteAllBytesAsync(_dir.File("disk.raw"), new byte[1 << 20]);
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            string[] arguments =
            [
                "--chardev", $"socket,id=mon0,path={_dir.File($"{daemon.Name}-qmp.sock")},server=on,wait=off", "--monitor", "chardev=mon0",
                "--blockdev", $"driver=file,node-name=file0,filename={_dir.File("disk.raw")}", "--blockdev", "driver=raw,node-name=drive0,file=file0",
                "--nbd-server", $"addr.type=unix,addr.path={_dir.File($"{daemon.Name}-nbd.sock")}",
                "--export", "type=nbd,id=exp0,node-name=drive0,name=disk", "--pidfile", _dir.File($"{daemon.Name}-pid"),
            ];
            for (var life = 0; life < 2; life++)
            {
                var start = new ProcessStartInfo(daemon.Program) { RedirectStandardError = true, UseShellExecute = false };
                foreach (var argument in (string[])[.. daemon.Prefix, .. arguments])
                {
                    start.ArgumentList.Add(argument);
                }

                File.Delete(_dir.File($"{daemon.Name}-pid"));
                using var process = Process.Start(start)!;
                var stderr = process.StandardError.ReadToEndAsync();
                try
                {
                    var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                    while (!File.Exists(_dir.File($"{daemon.Name}-pid")))
                    {
                        Assert.False(process.HasExited, $"{daemon.Name} exited in life {life}: {(process.HasExited ? await stderr : "")}");
                        Assert.True(DateTime.UtcNow < deadline, $"{daemon.Name} did not start within 30 s");
                        await Task.Delay(10);
                    }

                    await using (var qmp = await QmpClient.ConnectAsync(_dir.File($"{daemon.Name}-qmp.sock")))
                    {
                        await qmp.ExecuteAsync("query-version");
                    }

                    Assert.Equal(1UL << 20, await NbdExportSizeAsync(_dir.File($"{daemon.Name}-nbd.sock")));
                }
                finally
                {
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync();
                }

                // SIGKILL: nothing was cleaned up.
                Assert.True(File.Exists(_dir.File($"{daemon.Name}-qmp.sock")) && File.Exists(_dir.File($"{daemon.Name}-nbd.sock")),
                    $"{daemon.Name} removed its socket files though it was killed");
            }
        }
    }

    /// <summary>The size of the export <c>disk</c>, as our NBD client learns it from a full handshake (within 10 s).</summary>
    internal static async Task<ulong> NbdExportSizeAsync(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await using var client = await NbdClientConnection.OpenAsync(new NetworkStream(socket, ownsSocket: true), "disk", null, timeout.Token);
        return client.Info.Size;
    }
}
