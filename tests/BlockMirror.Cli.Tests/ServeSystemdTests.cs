using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror serve</c> under a service manager: sd_notify's READY=1 once everything serves and STOPPING=1
/// at shutdown (to the datagram socket in NOTIFY_SOCKET), and sockets passed by socket activation
/// (LISTEN_FDS, named by LISTEN_FDNAMES) for the monitor and the NBD server. systemd-socket-activate plays the
/// service manager's part: it binds, and execs the daemon with the sockets from fd 3 on.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServeSystemdTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-systemd-");

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Ready_is_notified_once_the_monitor_serves_and_stopping_at_quit(bool abstractName)
    {
        // The pid file is a FIFO: the daemon stands still between applying its options and serving until the
        // test reads it, so a READY=1 sent any earlier would be waiting in the notify socket by then.
        var pidfile = _dir.File("pid");
        Assert.Equal(0, ServeStartupTests.MakeFifo(pidfile, 0x180));
        var (notify, address) = BindNotifySocket(abstractName);
        using var _ = notify;
        var start = BlockMirrorCli.StartInfo(["serve",
            "--chardev", $"socket,id=m,path={_dir.File("qmp.sock")},server=on,wait=off", "--monitor", "m",
            "--blockdev", "driver=null-co,node-name=n,size=1048576", "--pidfile", pidfile]);
        start.Environment["NOTIFY_SOCKET"] = address;
        using var daemon = Process.Start(start)!;
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            // The monitor's socket is bound, the daemon is on its way to the pid file: nothing may come yet.
            while (!File.Exists(_dir.File("qmp.sock")) && !daemon.HasExited)
            {
                await Task.Delay(10);
            }

            await Task.WhenAny(daemon.WaitForExitAsync(), Task.Delay(TimeSpan.FromSeconds(2)));
            Assert.False(daemon.HasExited, daemon.HasExited ? await stderr : "");
            Assert.True(notify.Available == 0, "notified before the daemon serves");

            var pid = await File.ReadAllTextAsync(pidfile);
            Assert.Equal(daemon.Id.ToString(CultureInfo.InvariantCulture), pid.Trim());

            // The pid file is written just before the daemon serves: nothing was notified before it.
            Assert.Equal("READY=1", await ReceiveAsync(notify, daemon, stderr));
            await using (var qmp = await QmpClient.ConnectAsync(_dir.File("qmp.sock"), TimeSpan.Zero))
            {
                Assert.Single((await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray());
                await qmp.ExecuteAsync("quit");
            }

            Assert.Equal("STOPPING=1", await ReceiveAsync(notify, daemon, stderr));
            await daemon.WaitForExitAsync();
            Assert.True(daemon.ExitCode == 0, await stderr);
        }
        finally
        {
            await EndAsync(daemon);
        }
    }

    [Fact]
    public async Task A_daemon_that_fails_to_start_never_notifies_ready()
    {
        var (notify, address) = BindNotifySocket(abstractName: false);
        using var _ = notify;
        var start = BlockMirrorCli.StartInfo(["serve",
            "--chardev", $"socket,id=m,path={_dir.File("qmp.sock")},server=on,wait=off", "--monitor", "m",
            "--blockdev", $"driver=file,node-name=f,filename={_dir.File("missing.raw")}"]);
        start.Environment["NOTIFY_SOCKET"] = address;
        using var daemon = Process.Start(start)!;
        var stderr = await daemon.StandardError.ReadToEndAsync();
        await daemon.WaitForExitAsync();

        Assert.True(daemon.ExitCode == 1, stderr);
        Assert.Contains("--blockdev", stderr, StringComparison.Ordinal);
        Assert.Equal(0, notify.Available);
    }

    [SkippableFact]
    public async Task Socket_activated_monitor_and_nbd_server_are_taken_by_name_and_serve()
    {
        await File.WriteAllBytesAsync(_dir.File("disk.raw"), new byte[1 << 20]);
        var qmpPath = _dir.File("qmp.sock");
        var nbdPath = _dir.File("nbd.sock");
        var (notify, address) = BindNotifySocket(abstractName: false);
        using var _ = notify;
        using var daemon = StartActivated(["-l", qmpPath, "-l", nbdPath, "--fdname=qmp:nbd"], address,
            "--chardev", "socket,id=m,fd=qmp,server=on,wait=off", "--monitor", "m",
            "--blockdev", $"driver=file,node-name=f,filename={_dir.File("disk.raw")}", "--blockdev", "driver=raw,node-name=disk,file=f",
            "--nbd-server", "addr.type=fd,addr.str=nbd", "--export", "type=nbd,id=e,node-name=disk,name=disk");
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            // systemd-socket-activate binds both sockets and starts the daemon when the first client connects;
            // the daemon says when it serves (under a loaded JIT, starting can outlast a greeting's timeout).
            while (!File.Exists(qmpPath) && !daemon.HasExited)
            {
                await Task.Delay(10);
            }

            using (var first = await ConnectWhenListeningAsync(qmpPath))
            {
                Assert.Equal("READY=1", await ReceiveAsync(notify, daemon, stderr));
            }

            await using var qmp = await QmpClient.ConnectAsync(qmpPath);
            Assert.Single((await qmp.ExecuteAsync("query-block-exports"))!.AsArray());
            Assert.Equal(1UL << 20, await ServeStartupTests.NbdExportSizeAsync(nbdPath));
            await qmp.ExecuteAsync("quit");
            await daemon.WaitForExitAsync();
            Assert.True(daemon.ExitCode == 0, await stderr);
            // The socket files belong to whoever bound them (systemd removes them when the unit goes).
            Assert.True(File.Exists(qmpPath) && File.Exists(nbdPath));
        }
        finally
        {
            await EndAsync(daemon);
        }
    }

    /// <summary>
    /// Connects to a socket systemd-socket-activate has bound: its file exists from bind on, but a connection
    /// is refused until it also listens, a moment later (seen under load).
    /// </summary>
    static async Task<Socket> ConnectWhenListeningAsync(string path)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
                return socket;
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused && DateTime.UtcNow < deadline)
            {
                socket.Dispose();
                await Task.Delay(10);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    [Fact]
    public async Task Descriptors_passed_for_another_process_are_not_taken()
    {
        // LISTEN_PID names another process (the daemon's parent, say): its sockets are not the daemon's.
        var start = BlockMirrorCli.StartInfo(["serve", "--chardev", "socket,id=m,fd=qmp,server=on,wait=off", "--monitor", "m"]);
        start.Environment["LISTEN_PID"] = "1";
        start.Environment["LISTEN_FDS"] = "1";
        start.Environment["LISTEN_FDNAMES"] = "qmp";
        using var daemon = Process.Start(start)!;
        var stderr = await daemon.StandardError.ReadToEndAsync();
        await daemon.WaitForExitAsync();

        Assert.Equal(1, daemon.ExitCode);
        Assert.Equal("blockmirror serve: --chardev socket,id=m,fd=qmp,server=on,wait=off: Unable to parse FD number qmp", stderr.Trim());
    }

    [SkippableTheory]
    [InlineData("--nbd-server", "addr.type=fd,addr.str=qnp", "Unable to parse FD number qnp (socket activation passed: qmp)")]
    [InlineData("--nbd-server", "addr.type=fd,addr.str=qmp", "File descriptor 'qmp' (fd 3 from socket activation) is already used by an earlier option")]
    [InlineData("--nbd-server", "addr.type=fd,addr.str=3", "File descriptor '3' is already used by an earlier option")]
    public async Task An_activated_socket_misnamed_or_named_twice_is_refused_at_its_option(string option, string value, string error)
    {
        var qmpPath = _dir.File("qmp.sock");
        using var daemon = StartActivated(["-l", qmpPath, "--fdname=qmp"], null, "--chardev", "socket,id=m,fd=qmp,server=on,wait=off", "--monitor", "m", option, value);
        var stderr = daemon.StandardError.ReadToEndAsync();
        while (!File.Exists(qmpPath) && !daemon.HasExited)
        {
            await Task.Delay(10);
        }

        // The daemon starts at the first connection; this one is closed when it fails.
        using (await ConnectWhenListeningAsync(qmpPath))
        {
            await daemon.WaitForExitAsync();
        }

        Assert.Equal(1, daemon.ExitCode);
        Assert.Contains($"blockmirror serve: {option} {value}: {error}\n", await stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// <c>blockmirror serve SERVE_ARGUMENTS</c> under systemd-socket-activate with <paramref name="activation"/>
    /// (its sockets and names); it binds them and starts the daemon when the first client connects.
    /// </summary>
    static Process StartActivated(string[] activation, string? notifySocket, params string[] serveArguments)
    {
        var start = BlockMirrorCli.StartInfo([]);
        if (notifySocket is not null)
        {
            start.Environment["NOTIFY_SOCKET"] = notifySocket;
        }

        start.FileName = ExternalTool.Require("systemd-socket-activate");
        start.ArgumentList.Clear();
        // systemd-socket-activate passes on only the variables -E names (as systemd passes NOTIFY_SOCKET to a unit).
        string[] environment = notifySocket is null ? [] : ["-E", $"NOTIFY_SOCKET={notifySocket}"];
        foreach (var argument in (string[])[.. environment, .. activation, .. BlockMirrorCli.Launcher, "serve", .. serveArguments])
        {
            start.ArgumentList.Add(argument);
        }

        return Process.Start(start)!;
    }

    /// <summary>Kills the daemon if a failed assertion left it running, and waits for it.</summary>
    internal static async Task EndAsync(Process daemon)
    {
        if (!daemon.HasExited)
        {
            daemon.Kill(entireProcessTree: true);
        }

        await daemon.WaitForExitAsync();
    }

    /// <summary>A datagram socket for sd_notify messages, at a path or (with <paramref name="abstractName"/>) an abstract name.</summary>
    (Socket Socket, string Address) BindNotifySocket(bool abstractName)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        var name = abstractName ? $"blockmirror-test-{Guid.NewGuid():N}" : _dir.File("notify.sock");
        socket.Bind(new UnixDomainSocketEndPoint(abstractName ? "\0" + name : name));
        return (socket, abstractName ? "@" + name : name);
    }

    /// <summary>The next notification, or a failure naming what the daemon said if none comes within 60 s.</summary>
    static async Task<string> ReceiveAsync(Socket notify, Process daemon, Task<string> stderr)
    {
        var buffer = new byte[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            var n = await notify.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"no notification within 60 s; exited: {daemon.HasExited}; stderr: {(daemon.HasExited ? await stderr : "")}");
        }
    }
}
