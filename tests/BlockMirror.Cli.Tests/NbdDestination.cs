using System.Diagnostics;
using System.Net.Sockets;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A mirror's destination the test can kill: qemu-nbd exporting a raw file as <c>disk</c> on a Unix socket,
/// killed with SIGKILL (a host or daemon that dies, no goodbye on the wire) and started again on the same path.
/// </summary>
sealed class NbdDestination : IAsyncDisposable
{
    readonly string _image;
    Process? _server;

    NbdDestination(string image, string socket)
    {
        _image = image;
        Socket = socket;
    }

    public string Socket { get; }

    /// <summary>blockdev options for a client node of this destination.</summary>
    public string[] ClientNode(string nodeName, int reconnectDelay) =>
        ["--blockdev", $"driver=nbd,node-name={nodeName},server.type=unix,server.path={Socket},export=disk,reconnect-delay={reconnectDelay}"];

    /// <summary>Starts qemu-nbd on <paramref name="image"/>; returns once it takes connections.</summary>
    public static async Task<NbdDestination> StartAsync(string image, string socket)
    {
        var destination = new NbdDestination(image, socket);
        await destination.RestartAsync();
        return destination;
    }

    /// <summary>SIGKILL: the server is gone at once, its connections reset.</summary>
    public async Task KillAsync()
    {
        _server!.Kill();
        await _server.WaitForExitAsync();
        _server.Dispose();
        _server = null;
    }

    /// <summary>Starts the server again on the same socket path (qemu-nbd replaces the stale socket file).</summary>
    public async Task RestartAsync()
    {
        var start = new ProcessStartInfo(ExternalTool.Require("qemu-nbd")) { UseShellExecute = false, RedirectStandardError = true };
        foreach (var argument in (string[])["--persistent", "--shared=4", "--socket", Socket, "--export-name", "disk", "--format", "raw", _image])
        {
            start.ArgumentList.Add(argument);
        }

        _server = Process.Start(start)!;
        using var guard = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        while (!await ListeningAsync())
        {
            Assert.False(_server.HasExited, $"qemu-nbd exited with {(_server.HasExited ? _server.ExitCode : 0)}: {(_server.HasExited ? await _server.StandardError.ReadToEndAsync() : "")}");
            await Task.Delay(20, guard.Token);
        }
    }

    async Task<bool> ListeningAsync()
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await probe.ConnectAsync(new UnixDomainSocketEndPoint(Socket));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_server is not null)
        {
            await KillAsync();
        }
    }
}
