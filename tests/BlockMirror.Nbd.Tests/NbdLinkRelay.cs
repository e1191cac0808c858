using System.Net;
using System.Net.Sockets;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// A network link the test controls, between an NBD client and a server: a Unix socket that relays each
/// connection to the server's TCP port. <see cref="Cut"/> drops every connection on it (a dead destination,
/// seen from the client); while <see cref="Up"/> is false new connections are closed at once (the destination
/// is still down); <see cref="Backend"/> picks the server the next connections reach (a restarted one).
/// </summary>
sealed class NbdLinkRelay : IAsyncDisposable
{
    readonly Socket _listener = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    readonly List<Socket> _open = [];
    readonly Lock _lock = new();
    readonly Task _accepting;
    volatile bool _up = true;
    int _accepted;

    public NbdLinkRelay(string path, IPEndPoint backend)
    {
        Path = path;
        Backend = backend;
        _listener.Bind(new UnixDomainSocketEndPoint(path));
        _listener.Listen();
        _accepting = AcceptAsync();
    }

    public string Path { get; }

    public IPEndPoint Backend { get; set; }

    /// <summary>Connections the link has taken, up or down.</summary>
    public int Accepted => Volatile.Read(ref _accepted);

    /// <summary>Whether new connections reach the server.</summary>
    public bool Up
    {
        get => _up;
        set => _up = value;
    }

    /// <summary>Drops every connection on the link, both ends.</summary>
    public void Cut()
    {
        lock (_lock)
        {
            foreach (var socket in _open)
            {
                socket.Dispose();
            }

            _open.Clear();
        }
    }

    /// <summary>Sends <paramref name="bytes"/> to every client as if the server had (a server that breaks the protocol).</summary>
    public void SendToClients(byte[] bytes)
    {
        lock (_lock)
        {
            foreach (var socket in _open.Where((_, i) => i % 2 == 0))
            {
                socket.Send(bytes);
            }
        }
    }

    async Task AcceptAsync()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync();
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                return;
            }

            Interlocked.Increment(ref _accepted);
            if (!_up)
            {
                client.Dispose();
                continue;
            }

            var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await server.ConnectAsync(Backend);
            }
            catch (SocketException)
            {
                client.Dispose();
                server.Dispose();
                continue;
            }

            lock (_lock)
            {
                // Client first, then its server: SendToClients takes the even places.
                _open.Add(client);
                _open.Add(server);
            }

            _ = PumpAsync(client, server);
            _ = PumpAsync(server, client);
        }
    }

    static async Task PumpAsync(Socket from, Socket to)
    {
        var buffer = new byte[1 << 16];
        try
        {
            while (true)
            {
                var read = await from.ReceiveAsync(buffer);
                if (read == 0)
                {
                    break;
                }

                await to.SendAsync(buffer.AsMemory(0, read));
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // The link was cut.
        }

        from.Dispose();
        to.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Dispose();
        await _accepting;
        Cut();
        File.Delete(Path);
    }
}
