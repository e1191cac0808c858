using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Net.Listening;
using BlockMirror.Qmp.Events;
using BlockMirror.Qmp.Protocol;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

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

    readonly List<SocketListener> _listeners = [];

    // The sessions events go to. A session joins itself the moment its qmp_capabilities succeeds, on its
    // own thread, before the reply is queued: registering it from the accept loop after the session had
    // started let a fast client negotiate and start a job before it was registered, and lose the job's
    // first events.
    readonly ConcurrentDictionary<QmpSession, byte> _negotiated = new();
    readonly IDisposable _events;
    long _sessions;

    /// <param name="loggerFactory">Where monitor connections and commands are logged (<see cref="QmpServerLog"/>); none by default.</param>
    public QmpServer(QmpCommandTable commands, JobEventBus events, ILoggerFactory? loggerFactory = null)
    {
        Commands = commands;
        _events = events.Subscribe(Broadcast);
        Logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<QmpServer>();
    }

    internal ILogger Logger { get; }

    public QmpCommandTable Commands { get; }

    /// <summary>
    /// Listens on a Unix socket (created with mode 0600: the monitor controls every disk) or a TCP endpoint.
    /// With <paramref name="acceptAfter"/>, clients that connect wait in the listen backlog, not greeted, until
    /// it completes: the daemon's start-up, as qemu-storage-daemon greets no monitor before its main loop runs.
    /// </summary>
    public EndPoint Listen(EndPoint endPoint, Task? acceptAfter = null)
    {
        var listener = SocketListener.Bind(endPoint, backlog: 16, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        lock (_listeners)
        {
            _listeners.Add(listener);
        }

        listener.Start(RunSessionAsync, acceptAfter);
        QmpServerLog.Listening(Logger, listener.LocalEndPoint);
        return listener.LocalEndPoint;
    }

    async Task RunSessionAsync(Stream stream, CancellationToken cancellationToken)
    {
        // How the log names this client: a number of its own (a Unix socket's peer has no address) and where from.
        var peer = (stream as System.Net.Sockets.NetworkStream)?.Socket.RemoteEndPoint;
        var client = $"#{Interlocked.Increment(ref _sessions)} ({(peer is IPEndPoint ? peer.ToString() : "unix")})";
        QmpServerLog.ClientConnected(Logger, client);
        var session = new QmpSession(stream, this, client);
        try
        {
            await session.RunAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _negotiated.TryRemove(session, out _);
            QmpServerLog.ClientDisconnected(Logger, client);
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
        List<SocketListener> listeners;
        lock (_listeners)
        {
            listeners = [.. _listeners];
            _listeners.Clear();
        }

        // Every listener stops accepting first, so no monitor connects to one while another is being closed.
        await Task.WhenAll(listeners.Select(l => l.StopAsync().AsTask())).ConfigureAwait(false);
    }
}
