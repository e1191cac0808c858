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
    readonly ServerProcess _server;

    QemuNbdExport(ServerProcess server, string name, string? socket, int port)
    {
        _server = server;
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
        var socket = tcp ? null : $"{image}.nbd.sock";
        var port = tcp ? FreePort() : 0;
        string[] arguments = ["-f", format, "-x", name, "--persistent", "--shared=4", .. tcp ? ["-b", "127.0.0.1", "-p", $"{port}"] : new[] { "-k", socket! }, image];
        EndPoint address = socket is null ? new IPEndPoint(IPAddress.Loopback, port) : new UnixDomainSocketEndPoint(socket);
        return new QemuNbdExport(await ServerProcess.StartAsync("qemu-nbd", arguments, address), name, socket, port);
    }

    /// <summary>A port nobody listens on now (the kernel's choice); qemu-nbd takes it a moment later.</summary>
    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Stops the server (once; again is nothing).</summary>
    public async ValueTask DisposeAsync()
    {
        await _server.DisposeAsync();
        if (Socket is not null)
        {
            File.Delete(Socket);
        }
    }
}
