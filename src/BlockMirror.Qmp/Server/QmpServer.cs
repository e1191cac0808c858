using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Qmp.Events;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Server;

/// <summary>
/// QMP monitors (<c>--chardev socket,...</c> + <c>--monitor</c>): listening sockets, the sessions on them,
/// and the job events every negotiated session receives.
/// </summary>
public sealed class QmpServer : IAsyncDisposable
{
    /// <summary>The QEMU version we speak the QMP of (qapi schema 7.2).</summary>
    public const int Major = 7, Minor = 2, Micro = 0;

    public const string Package = "BlockMirror";

    readonly List<Socket> _listeners = [];
    readonly List<string> _socketPaths = [];
    readonly ConcurrentDictionary<QmpSession, Task> _sessions = new();

    // The sessions events go to. A session joins itself the moment its qmp_capabilities succeeds, on its
    // own thread, before the reply is queued: registering it from the accept loop after the session had
    // started let a fast client negotiate and start a job before it was registered, and lose the job's
    // first events.
    readonly ConcurrentDictionary<QmpSession, byte> _negotiated = new();
    readonly CancellationTokenSource _stopping = new();
    readonly List<Task> _accepting = [];
    readonly IDisposable _events;

    public QmpServer(QmpCommandTable commands, JobEventBus events)
    {
        Commands = commands;
        _events = events.Subscribe(Broadcast);
    }

    public QmpCommandTable Commands { get; }

    /// <summary>
    /// Listens on a Unix socket (created with mode 0600: the monitor controls every disk) or a TCP endpoint.
    /// With <paramref name="acceptAfter"/>, clients that connect wait in the listen backlog, not greeted, until
    /// it completes: the daemon's start-up, as qemu-storage-daemon greets no monitor before its main loop runs.
    /// </summary>
    public EndPoint Listen(EndPoint endPoint, Task? acceptAfter = null)
    {
        var unix = endPoint is UnixDomainSocketEndPoint;
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, unix ? ProtocolType.Unspecified : ProtocolType.Tcp);
        try
        {
            socket.Bind(endPoint);
            if (unix)
            {
                var path = endPoint.ToString()!;
                _socketPaths.Add(path);
                if (!OperatingSystem.IsWindows())
                {
                    File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
                }
            }

            socket.Listen(16);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        _listeners.Add(socket);
        _accepting.Add(AcceptAsync(socket, acceptAfter, _stopping.Token));
        return socket.LocalEndPoint!;
    }

    async Task AcceptAsync(Socket listener, Task? acceptAfter, CancellationToken cancellationToken)
    {
        try
        {
            await (acceptAfter ?? Task.CompletedTask).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        while (!cancellationToken.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    return;
                }

                continue;
            }

            // Registered before it starts, so that its end (which unregisters it) always comes after.
            var session = new QmpSession(new NetworkStream(client, ownsSocket: true), this);
            var start = new Task<Task>(() => RunSessionAsync(session, cancellationToken));
            _sessions[session] = start.Unwrap();
            start.Start(TaskScheduler.Default);
        }
    }

    async Task RunSessionAsync(QmpSession session, CancellationToken cancellationToken)
    {
        try
        {
            await session.RunAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _negotiated.TryRemove(session, out _);
            _sessions.TryRemove(session, out _);
        }
    }

    /// <summary>Sends an event to every negotiated monitor.</summary>
    public void Broadcast(JobEvent e)
    {
        var json = QmpSession.Serialize(writer => QmpEventWriter.Write(writer, e));
        foreach (var session in _negotiated.Keys)
        {
            session.Send(json);
        }
    }

    /// <summary>Sends a daemon event to every negotiated monitor.</summary>
    public void Broadcast(QmpEvent e)
    {
        var json = QmpSession.Serialize(writer =>
        {
            writer.WriteStartObject();
            writer.WriteString("event", e.Name);
            writer.WritePropertyName("data");
            e.Data.WriteTo(writer);
            QmpEventWriter.WriteTimestamp(writer, e.Timestamp);
            writer.WriteEndObject();
        });
        foreach (var session in _negotiated.Keys)
        {
            session.Send(json);
        }
    }

    long _peakBacklog;

    /// <summary>
    /// The most output any session has had queued and unsent at once, in bytes: tests check with it that a
    /// client that does not read cannot make the daemon's memory grow.
    /// </summary>
    public long PeakBacklog => Volatile.Read(ref _peakBacklog);

    internal void RecordBacklog(long backlog)
    {
        long peak;
        while (backlog > (peak = Volatile.Read(ref _peakBacklog)) && Interlocked.CompareExchange(ref _peakBacklog, backlog, peak) != peak)
        {
        }
    }

    /// <summary>Called by a session once negotiated: every event published from now on reaches it.</summary>
    internal void Join(QmpSession session) => _negotiated[session] = 0;

    internal byte[] Greeting() => QmpSession.Serialize(writer =>
    {
        writer.WriteStartObject();
        writer.WriteStartObject("QMP");
        writer.WriteStartObject("version");
        writer.WriteStartObject("qemu");
        writer.WriteNumber("micro", Micro);
        writer.WriteNumber("minor", Minor);
        writer.WriteNumber("major", Major);
        writer.WriteEndObject();
        writer.WriteString("package", Package);
        writer.WriteEndObject();
        writer.WriteStartArray("capabilities");
        writer.WriteEndArray();
        writer.WriteEndObject();
        writer.WriteEndObject();
    });

    public async ValueTask DisposeAsync()
    {
        _events.Dispose();
        await _stopping.CancelAsync().ConfigureAwait(false);
        foreach (var listener in _listeners)
        {
            listener.Dispose();
        }

        await Task.WhenAll(_accepting).ConfigureAwait(false);
        await Task.WhenAll(_sessions.Values).ConfigureAwait(false);
        foreach (var path in _socketPaths)
        {
            File.Delete(path);
        }

        _stopping.Dispose();
    }
}
