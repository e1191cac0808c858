using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace BlockMirror.Net.Listening;

/// <summary>
/// The listening sockets of one address (a Unix socket, or every address a TCP host resolves to:
/// <see cref="InetListenEndPoint"/>) and the connections accepted on them: the accept loop the NBD server and
/// the QMP monitors share. Each accepted connection runs <see cref="ConnectionHandler"/> on its own task with the
/// stream the listener's <see cref="StreamUpgrade"/> made of it (the socket's own stream when there is none).
/// </summary>
/// <remarks>
/// An accept that fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) leaves the connection waiting
/// in the backlog, so trying again at once fails again at once: the loop waits, doubling from
/// <see cref="MinBackoff"/> to <see cref="MaxBackoff"/>, instead of spinning on a core until a descriptor
/// frees. A client that gave up while queued (ECONNABORTED) is skipped without waiting.
/// </remarks>
public sealed class SocketListener : IAsyncDisposable
{
    /// <summary>The first wait after a failed accept.</summary>
    public static readonly TimeSpan MinBackoff = TimeSpan.FromMilliseconds(10);

    /// <summary>The longest wait between accepts that keep failing: how late a freed descriptor is noticed at worst.</summary>
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(1);

    readonly Socket[] _sockets;
    readonly string? _unixPath;
    readonly TimeProvider _time;
    readonly Func<Socket, CancellationToken, ValueTask<Socket>> _accept;
    readonly CancellationTokenSource _stopping = new();
    readonly ConcurrentDictionary<Task, byte> _connections = new();

    // One per connection that may be served at once, when there is a limit; taken before accept, given back when
    // the connection ends.
    SemaphoreSlim? _slots;
    Task? _accepting;
    int _stopped;

    internal SocketListener(Socket socket, string? unixPath, TimeProvider time, Func<Socket, CancellationToken, ValueTask<Socket>>? accept = null)
        : this([socket], unixPath, time, accept)
    {
    }

    SocketListener(Socket[] sockets, string? unixPath, TimeProvider time, Func<Socket, CancellationToken, ValueTask<Socket>>? accept = null)
    {
        _sockets = sockets;
        _unixPath = unixPath;
        _time = time;
        _accept = accept ?? ((listener, cancellationToken) => listener.AcceptAsync(cancellationToken));
        LocalEndPoint = sockets[0].LocalEndPoint!;
        LocalEndPoints = [.. sockets.Select(s => s.LocalEndPoint!)];
    }

    /// <summary>
    /// Binds <paramref name="endPoint"/> and listens. A Unix socket path must not exist yet, unless it is a socket file
    /// nobody listens on (<see cref="StaleUnixSocket"/>), which is replaced; with <paramref name="unixMode"/> its file
    /// gets that mode before any client can connect.
    /// </summary>
    /// <exception cref="SocketException">The address is in use or cannot be bound.</exception>
    /// <remarks>
    /// An <see cref="InheritedSocketEndPoint"/> is not bound: its socket is made to listen (QEMU's socket_listen on
    /// an fd), and its Unix socket file, which belongs to whoever made it, is left in place on stop.
    /// </remarks>
    /// <exception cref="IOException">An inherited socket cannot listen (a connected or datagram socket).</exception>
    public static SocketListener Bind(EndPoint endPoint, int backlog, UnixFileMode? unixMode = null, TimeProvider? time = null)
    {
        if (endPoint is InheritedSocketEndPoint inherited)
        {
            return Adopt(inherited, backlog, time);
        }

        if (endPoint is InetListenEndPoint inet)
        {
            return BindAll(inet, backlog, time);
        }

        var unix = endPoint is UnixDomainSocketEndPoint;
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, unix ? ProtocolType.Unspecified : ProtocolType.Tcp);
        string? path = null;
        try
        {
            if (!unix)
            {
                // A restarted daemon rebinds its port while the old connections sit in TIME_WAIT.
                socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            }

            try
            {
                socket.Bind(endPoint);
            }
            catch (SocketException e) when (unix && e.SocketErrorCode == SocketError.AddressAlreadyInUse && StaleUnixSocket.TryRemove(endPoint.ToString()!))
            {
                socket.Bind(endPoint);
            }

            if (unix)
            {
                path = endPoint.ToString()!;
                if (unixMode is { } mode && !OperatingSystem.IsWindows())
                {
                    File.SetUnixFileMode(path, mode);
                }
            }

            socket.Listen(backlog);
        }
        catch
        {
            socket.Dispose();
            if (path is not null)
            {
                File.Delete(path);
            }

            throw;
        }

        return new SocketListener(socket, path, time ?? TimeProvider.System);
    }

    /// <summary>
    /// A socket for each of <paramref name="inet"/>'s addresses, as QEMU's QIONetListener: the listener stands if one
    /// of them can be bound (an IPv6 address on a host without IPv6 is passed over), else the first failure is thrown.
    /// </summary>
    static SocketListener BindAll(InetListenEndPoint inet, int backlog, TimeProvider? time)
    {
        var sockets = new List<Socket>();
        SocketException? first = null;
        foreach (var address in inet.Addresses)
        {
            Socket? socket = null;
            try
            {
                socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                // Dual-stack unless an IPv4 socket of the same listener takes the IPv4 side (the wildcard pair an
                // empty host resolves to): QEMU's dual bind fails there and it binds IPv6 alone, which is where
                // Linux leaves it too once the IPv4 wildcard listens.
                var dual = address.AddressFamily == AddressFamily.InterNetworkV6 && !inet.V6Only
                    && !inet.Addresses.Any(a => a.AddressFamily == AddressFamily.InterNetwork);
                if (address.AddressFamily == AddressFamily.InterNetworkV6)
                {
                    socket.DualMode = dual;
                }

                try
                {
                    socket.Bind(address);
                }
                catch (SocketException e) when (dual && e.SocketErrorCode == SocketError.AddressAlreadyInUse)
                {
                    // The IPv4 side of the port is taken, by this listener's own 0.0.0.0 socket when the host was
                    // empty: IPv6 alone, as QEMU retries.
                    socket.DualMode = false;
                    socket.Bind(address);
                }

                socket.Listen(backlog);
                sockets.Add(socket);
            }
            catch (SocketException e)
            {
                socket?.Dispose();
                first ??= e;
            }
        }

        return sockets.Count > 0 ? new SocketListener([.. sockets], unixPath: null, time ?? TimeProvider.System) : throw first!;
    }

    static SocketListener Adopt(InheritedSocketEndPoint inherited, int backlog, TimeProvider? time)
    {
        try
        {
            inherited.Listen(backlog);
        }
        catch (IOException)
        {
            inherited.Socket.Dispose();
            throw;
        }

        return new SocketListener(inherited.Socket, unixPath: null, time ?? TimeProvider.System);
    }

    /// <summary>Where the listener listens (the real port when 0 was asked for); the first socket's, when there are several.</summary>
    public EndPoint LocalEndPoint { get; }

    /// <summary>Where each of the listener's sockets listens.</summary>
    public IReadOnlyList<EndPoint> LocalEndPoints { get; }

    /// <summary>Connections being served right now.</summary>
    public int ConnectionCount => _connections.Count;

    /// <summary>
    /// Starts accepting. With <paramref name="acceptAfter"/>, not before it completes: clients wait in the
    /// listen backlog meanwhile (a daemon applying its command line greets nobody yet, as qemu-storage-daemon).
    /// With <paramref name="maxConnections"/> (0: no limit), no more are served at once: the next client waits in
    /// the backlog until one ends, as QEMU's NBD server stops accepting at its <c>max-connections</c>.
    /// </summary>
    public void Start(ConnectionHandler handler, Task? acceptAfter = null, StreamUpgrade? upgrade = null, int maxConnections = 0)
    {
        if (_accepting is not null)
        {
            throw new InvalidOperationException("the listener is already accepting");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(maxConnections);
        _slots = maxConnections == 0 ? null : new SemaphoreSlim(maxConnections, maxConnections);
        _accepting = AcceptAsync(handler, acceptAfter, upgrade, _stopping.Token);
    }

    async Task AcceptAsync(ConnectionHandler handler, Task? acceptAfter, StreamUpgrade? upgrade, CancellationToken cancellationToken)
    {
        try
        {
            await (acceptAfter ?? Task.CompletedTask).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        var slots = _slots;
        // One accept waits on each socket that has none waiting, started once a slot is free; the first client of
        // any socket is served. With one socket nothing is accepted past the limit; with several, a client accepted
        // on another socket meanwhile waits for its slot unserved, as it would in the backlog.
        var pending = new Task<Socket>?[_sockets.Length];
        try
        {
            await AcceptEachAsync(handler, upgrade, slots, pending, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            foreach (var accept in pending)
            {
                // Stopped: a connection accepted after all is closed, a failed accept observed.
                _ = accept?.ContinueWith(static t =>
                {
                    if (t.IsCompletedSuccessfully)
                    {
                        t.Result.Dispose();
                    }
                    else
                    {
                        _ = t.Exception;
                    }
                }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
        }
    }

    async Task AcceptEachAsync(ConnectionHandler handler, StreamUpgrade? upgrade, SemaphoreSlim? slots, Task<Socket>?[] pending, CancellationToken cancellationToken)
    {
        var backoff = TimeSpan.Zero;
        while (!cancellationToken.IsCancellationRequested)
        {
            if (slots is not null)
            {
                try
                {
                    await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }

            for (var i = 0; i < pending.Length; i++)
            {
                pending[i] ??= StartAccept(_sockets[i], cancellationToken);
            }

            var accepted = pending.Length == 1 ? pending[0]! : await Task.WhenAny(pending!).ConfigureAwait(false);
            pending[Array.IndexOf(pending, accepted)] = null;
            Socket client;
            try
            {
                client = await accepted.ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException && cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionAborted or SocketError.ConnectionReset or SocketError.Interrupted)
            {
                // That client is gone; the next one in the backlog is unaffected.
                slots?.Release();
                continue;
            }
            catch (SocketException)
            {
                slots?.Release();
                // Out of descriptors or memory: the connection stays queued and a retry now fails the same way.
                backoff = backoff == TimeSpan.Zero ? MinBackoff : TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, MaxBackoff.Ticks));
                try
                {
                    await Task.Delay(backoff, _time, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            backoff = TimeSpan.Zero;
            if (client.ProtocolType == ProtocolType.Tcp)
            {
                // Protocol replies are small and latency-bound: never wait to coalesce them.
                client.NoDelay = true;
            }

            // Registered before its removal can be: the continuation is added after TryAdd.
            var connection = Task.Run(() => ServeAsync(client, handler, upgrade, cancellationToken), CancellationToken.None);
            _connections.TryAdd(connection, 0);
            _ = connection.ContinueWith(static (t, state) =>
                {
                    var listener = (SocketListener)state!;
                    listener._connections.TryRemove(t, out _);
                    listener._slots?.Release();
                }, this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    /// <summary>An accept on <paramref name="socket"/>; one that fails at once (a disposed socket) is a failed task.</summary>
    Task<Socket> StartAccept(Socket socket, CancellationToken cancellationToken)
    {
        try
        {
            return _accept(socket, cancellationToken).AsTask();
        }
        catch (Exception ex)
        {
            return Task.FromException<Socket>(ex);
        }
    }

    static async Task ServeAsync(Socket client, ConnectionHandler handler, StreamUpgrade? upgrade, CancellationToken cancellationToken)
    {
        Stream stream = new NetworkStream(client, ownsSocket: true);
        if (upgrade is not null)
        {
            try
            {
                stream = await upgrade(stream, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or System.Security.Authentication.AuthenticationException)
            {
                // A client that fails the upgrade (a bad certificate, a plain client on a TLS port) is closed.
                await stream.DisposeAsync().ConfigureAwait(false);
                return;
            }
        }

        await handler(stream, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Stops accepting, cancels the token every connection was given, waits for the connections to end and
    /// removes a Unix socket's file. Idempotent.
    /// </summary>
    public async ValueTask StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        foreach (var socket in _sockets)
        {
            socket.Dispose();
        }

        if (_accepting is not null)
        {
            await _accepting.ConfigureAwait(false);
        }

        // A handler's failure is its own to report (the NBD server keeps them for tests); here it only must end.
        await Task.WhenAll(_connections.Keys).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (_unixPath is not null)
        {
            File.Delete(_unixPath);
        }

        _stopping.Dispose();
    }

    public ValueTask DisposeAsync() => StopAsync();
}
