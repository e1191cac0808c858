using System.Buffers;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using BlockMirror.Qmp.Protocol;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Qmp.Server;

/// <summary>
/// One monitor connection: the greeting, capabilities negotiation, then commands run one at a time in the
/// order they arrive (as a QEMU monitor runs them), with events interleaved. Everything the session sends
/// goes through one queue and one writer, so a job's event never waits for a slow client and replies keep
/// their order. A client that does not read its replies is not read either: while more than
/// <see cref="MaxBacklogBytes"/> wait to be sent, the session takes no new command (QEMU likewise stops
/// reading a monitor whose output is backed up), so its memory stays bounded. Events are queued, never
/// dropped, up to <see cref="MaxUnreadBytes"/>: a client that leaves that much unread is disconnected (as Redis
/// treats a subscriber over its output limit), since the events a job sends with an <c>ignore</c> policy on a
/// failing disk (tens of thousands a second, also from qemu-storage-daemon) would otherwise grow the daemon
/// without end. A client that reads is never near it; one that was can reconnect and query the state.
/// </summary>
sealed class QmpSession
{
    /// <summary>Unsent output above which the session stops reading commands.</summary>
    public const int MaxBacklogBytes = 1 << 20;

    /// <summary>Unsent output (events, since commands stop at <see cref="MaxBacklogBytes"/>) at which the client is disconnected.</summary>
    public const int MaxUnreadBytes = 16 << 20;

    readonly Stream _stream;
    readonly QmpServer _server;
    readonly Channel<byte[]> _outgoing = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });
    readonly QmpJsonStreamer _input = new();
    long _backlog;
    int _overflowed;
    TaskCompletionSource? _roomWaiter;
    volatile bool _writerFailed;

    /// <param name="client">How the log names the client.</param>
    public QmpSession(Stream stream, QmpServer server, string client)
    {
        _stream = stream;
        _server = server;
        _client = client;
    }

    readonly string _client;

    /// <summary>Set once <c>qmp_capabilities</c> succeeded: from then on commands run and events are sent.</summary>
    public bool Negotiated { get; private set; }

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var writing = WriteLoopAsync();
        Send(_server.Greeting());
        var buffer = ArrayPool<byte>.Shared.Rent(64 << 10);
        try
        {
            while (true)
            {
                var read = await _stream.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }

                for (var used = 0; used < read;)
                {
                    used += _input.Feed(buffer.AsSpan(used, read - used));
                    while (_input.TryTake(out var message))
                    {
                        using (message.Document)
                        {
                            await HandleAsync(message, cancellationToken).ConfigureAwait(false);
                        }

                        if (!await WaitForRoomAsync(cancellationToken).ConfigureAwait(false))
                        {
                            return;
                        }
                    }
                }
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away, or the server is shutting down.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            _outgoing.Writer.TryComplete();
            try
            {
                // What is queued still goes out to a client that reads it...
                await writing.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // ...at shutdown too (quit's reply, the last events), for a moment.
                try
                {
                    await writing.WaitAsync(ShutdownGrace, CancellationToken.None).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                }
            }

            // ...but one that does not read must not hold the server's shutdown up: closing the stream ends
            // a write blocked on it.
            await _stream.DisposeAsync().ConfigureAwait(false);
            await writing.ConfigureAwait(false);
        }
    }

    static readonly ReadOnlyMemory<byte> LineEnd = "\r\n"u8.ToArray();

    /// <summary>How long a session that ends waits for its client to take the output still queued.</summary>
    static readonly TimeSpan ShutdownGrace = TimeSpan.FromSeconds(2);

    /// <summary>Output queued and not yet written to the socket, in bytes.</summary>
    public long Backlog => Volatile.Read(ref _backlog);

    /// <summary>Queues one JSON value; the writer adds QEMU's CRLF.</summary>
    public void Send(byte[] json)
    {
        var size = json.Length + LineEnd.Length;
        var backlog = Interlocked.Add(ref _backlog, size);
        if (backlog > MaxUnreadBytes)
        {
            Interlocked.Add(ref _backlog, -size);
            Disconnect(backlog - size);
            return;
        }

        _server.RecordBacklog(backlog);
        if (!_outgoing.Writer.TryWrite(json))
        {
            Interlocked.Add(ref _backlog, -size);
        }
    }

    /// <summary>Ends a session whose client leaves more than <see cref="MaxUnreadBytes"/> unread; called on the sender's thread.</summary>
    void Disconnect(long unread)
    {
        if (Interlocked.Exchange(ref _overflowed, 1) != 0)
        {
            return;
        }

        _outgoing.Writer.TryComplete();
        QmpServerLog.ClientOverflow(_server.Logger, _client, unread, MaxUnreadBytes);
        // Closing the connection ends the read loop's wait and the writer's blocked write, and the rest of
        // the queue is not sent. On the thread pool: not on the job that sent the event.
        ThreadPool.UnsafeQueueUserWorkItem(static stream => stream.Dispose(), _stream, preferLocal: false);
    }

    /// <summary>Waits while the backlog is over its bound; false when the client can no longer be written to.</summary>
    async ValueTask<bool> WaitForRoomAsync(CancellationToken cancellationToken)
    {
        while (Backlog > MaxBacklogBytes && !_writerFailed)
        {
            var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Volatile.Write(ref _roomWaiter, waiter);
            // The writer may have drained the queue before it could see the waiter: look again.
            if (Backlog <= MaxBacklogBytes || _writerFailed)
            {
                break;
            }

            await waiter.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }

        return !_writerFailed;
    }

    void WakeReader() => Interlocked.Exchange(ref _roomWaiter, null)?.TrySetResult();

    async Task WriteLoopAsync()
    {
        try
        {
            while (await _outgoing.Reader.WaitToReadAsync().ConfigureAwait(false))
            {
                // Write everything queued, then flush once.
                while (_outgoing.Reader.TryRead(out var json))
                {
                    await _stream.WriteAsync(json).ConfigureAwait(false);
                    await _stream.WriteAsync(LineEnd).ConfigureAwait(false);
                    if (Interlocked.Add(ref _backlog, -(json.Length + LineEnd.Length)) <= MaxBacklogBytes)
                    {
                        WakeReader();
                    }
                }

                await _stream.FlushAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException or System.Net.Sockets.SocketException)
        {
            // Nobody is listening any more; the read side notices and ends the session.
            _writerFailed = true;
            WakeReader();
        }
    }

    /// <summary>Answers one message; the caller disposes its document afterwards.</summary>
    async Task HandleAsync(QmpJsonStreamer.Message message, CancellationToken cancellationToken)
    {
        if (message.Document is not { } document)
        {
            SendError(null, QmpException.Generic(message.Error!));
            return;
        }

        var root = document.RootElement;
        JsonElement? id = null;
        try
        {
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw QmpException.Generic("QMP input must be a JSON object");
            }

            if (root.TryGetProperty("id", out var idValue))
            {
                id = idValue;
            }

            var (command, arguments) = ReadCommand(root);
            QmpServerLog.Command(_server.Logger, _client, command);
            var result = await ExecuteAsync(command, arguments, cancellationToken).ConfigureAwait(false);
            SendReturn(id, result);
        }
        catch (QmpException ex)
        {
            SendError(id, ex);
        }
    }

    static (string Command, QmpArguments Arguments) ReadCommand(JsonElement root)
    {
        string? command = null;
        var arguments = QmpArguments.Empty;
        // The first wrong member in QEMU's order is the one reported.
        foreach (var member in QDictOrder.Members(root))
        {
            switch (member.Name)
            {
                case "execute":
                    command = member.Value.ValueKind == JsonValueKind.String
                        ? member.Value.GetString()
                        : throw QmpException.Generic("QMP input member 'execute' must be a string");
                    break;
                case "arguments":
                    arguments = member.Value.ValueKind == JsonValueKind.Object
                        ? new QmpArguments(member.Value)
                        : throw QmpException.Generic("QMP input member 'arguments' must be an object");
                    break;
                case "id":
                    break;
                default:
                    throw QmpException.Generic($"QMP input member '{member.Name}' is unexpected");
            }
        }

        return (command ?? throw QmpException.Generic("QMP input lacks member 'execute'"), arguments);
    }

    async ValueTask<JsonNode?> ExecuteAsync(string command, QmpArguments arguments, CancellationToken cancellationToken)
    {
        if (command == QmpCapabilities.Name)
        {
            // Its arguments are checked first, as for any command, then whether it is still expected.
            var capabilities = arguments.Check(QmpCapabilities.Arguments).OptionalList("enable")?.Count ?? 0;
            if (Negotiated)
            {
                throw new QmpException(QmpException.CommandNotFound, "Capabilities negotiation is already complete, command ignored");
            }

            if (capabilities > 0)
            {
                throw QmpException.Generic("Capability 'oob' is not available");
            }

            Negotiated = true;
            _server.Join(this);
            return null;
        }

        if (!Negotiated)
        {
            throw new QmpException(QmpException.CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");
        }

        if (!_server.Commands.TryGet(command, out var declared))
        {
            throw new QmpException(QmpException.CommandNotFound, $"The command {command} has not been found");
        }

        try
        {
            return await declared.InvokeAsync(arguments, cancellationToken).ConfigureAwait(false);
        }
        catch (QmpException)
        {
            throw;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            // Every failure of a command is the client's answer, never the daemon's end.
            throw QmpException.Generic(ex.Message);
        }
    }

    void SendReturn(JsonElement? id, JsonNode? result) => Send(Serialize(writer =>
    {
        writer.WriteStartObject();
        writer.WritePropertyName("return");
        if (result is null)
        {
            writer.WriteStartObject();
            writer.WriteEndObject();
        }
        else
        {
            result.WriteTo(writer);
        }

        WriteId(writer, id);
        writer.WriteEndObject();
    }));

    void SendError(JsonElement? id, QmpException error)
    {
        QmpServerLog.CommandError(_server.Logger, _client, error.ErrorClass, error.Message);
        SendErrorReply(id, error);
    }

    void SendErrorReply(JsonElement? id, QmpException error) => Send(Serialize(writer =>
    {
        writer.WriteStartObject();
        writer.WriteStartObject("error");
        writer.WriteString("class", error.ErrorClass);
        writer.WriteString("desc", error.Message);
        writer.WriteEndObject();
        WriteId(writer, id);
        writer.WriteEndObject();
    }));

    static void WriteId(Utf8JsonWriter writer, JsonElement? id)
    {
        if (id is { } value)
        {
            writer.WritePropertyName("id");
            value.WriteTo(writer);
        }
    }

    /// <summary>QEMU sends quotes and non-ASCII text as they are; the default encoder would write \u0027 for '.</summary>
    /// An echoed <c>id</c> may be nested as deep as the input allows.
    static readonly JsonWriterOptions WriterOptions = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        MaxDepth = QmpJsonStreamer.MaxNesting + 2,
    };

    internal static byte[] Serialize(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, WriterOptions))
        {
            write(writer);
        }

        return buffer.WrittenSpan.ToArray();
    }
}
