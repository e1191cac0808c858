using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace BlockMirror.TestKit;

/// <summary>
/// An image file served by the real <c>qemu-nbd</c> for as long as the test holds it: on a Unix socket next
/// to the image, or on a free TCP port of 127.0.0.1; persistent (it outlives its clients) and shared by a few
/// clients at once. Disposing stops the server, so that the file can then be checked without its lock.
/// </summary>
public sealed class QemuNbdExport : IAsyncDisposable
{
    readonly Process _process;
    bool _disposed;

    QemuNbdExport(Process process, string name, string? socket, int port)
    {
        _process = process;
        Name = name;
        Socket = socket;
        Port = port;
    }

    public string Name { get; }

    /// <summary>The Unix socket, or null when served over TCP.</summary>
    public string? Socket { get; }

    /// <summary>The TCP port, or 0 when served on a Unix socket.</summary>
    public int Port { get; }

    /// <summary>The export's URI: <c>nbd+unix:///NAME?socket=PATH</c> or <c>nbd://127.0.0.1:PORT/NAME</c>.</summary>
    public string Uri => Socket is { } socket ? $"nbd+unix:///{Name}?socket={socket}" : $"nbd://127.0.0.1:{Port}/{Name}";

    /// <summary>Serves <paramref name="image"/> (as <paramref name="format"/>, raw by default) under <paramref name="name"/>.</summary>
    public static async Task<QemuNbdExport> StartAsync(string image, string name, bool tcp = false, string format = "raw")
    {
        var tool = ExternalTool.Require("qemu-nbd");
        var socket = tcp ? null : $"{image}.nbd.sock";
        var port = tcp ? FreePort() : 0;
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        string[] arguments = ["-f", format, "-x", name, "--persistent", "--shared=4", .. tcp ? ["-b", "127.0.0.1", "-p", $"{port}"] : new[] { "-k", socket! }, image];
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start qemu-nbd");
        var export = new QemuNbdExport(process, name, socket, port);
        try
        {
            await export.WaitListeningAsync();
            return export;
        }
        catch
        {
            await export.DisposeAsync();
            throw;
        }
    }

    /// <summary>A port nobody listens on now (the kernel's choice); qemu-nbd takes it a moment later.</summary>
    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    async Task WaitListeningAsync()
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"qemu-nbd exited with {_process.ExitCode}: {await _process.StandardError.ReadToEndAsync()}");
            }

            using var probe = Socket is null
                ? new System.Net.Sockets.Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                : new System.Net.Sockets.Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await probe.ConnectAsync(Socket is { } path ? new UnixDomainSocketEndPoint(path) : new IPEndPoint(IPAddress.Loopback, Port));
                return;
            }
            catch (SocketException) when (deadline.Elapsed < TimeSpan.FromSeconds(20))
            {
                await Task.Delay(50);
            }
        }
    }

    /// <summary>Stops the server (once; again is nothing).</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _process.WaitForExitAsync();
        _process.Dispose();
        if (Socket is not null)
        {
            File.Delete(Socket);
        }
    }
}
