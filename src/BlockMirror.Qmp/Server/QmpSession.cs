using System.Buffers;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Server;

/// <summary>
/// One monitor connection: the greeting, capabilities negotiation, then commands run one at a time in the
/// order they arrive (as a QEMU monitor runs them), with events interleaved. Everything the session sends
/// goes through one queue and one writer, so a job's event never waits for a slow client and replies keep
/// their order.
/// </summary>
sealed class QmpSession
{
    readonly Stream _stream;
    readonly QmpServer _server;
    readonly Channel<byte[]> _outgoing = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });
    readonly QmpInputSplitter _splitter = new();
    readonly List<QmpInputSplitter.Message> _messages = [];

    public QmpSession(Stream stream, QmpServer server)
    {
        _stream = stream;
        _server = server;
    }

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

                _splitter.Feed(buffer.AsSpan(0, read), _messages.Add);
                foreach (var message in _messages)
                {
                    await HandleAsync(message, cancellationToken).ConfigureAwait(false);
                }

                _messages.Clear();
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
            await writing.ConfigureAwait(false);
            await _stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    static readonly ReadOnlyMemory<byte> LineEnd = "\r\n"u8.ToArray();

    /// <summary>Queues one JSON value; the writer adds QEMU's CRLF.</summary>
    public void Send(byte[] json) => _outgoing.Writer.TryWrite(json);

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
                }

                await _stream.FlushAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            // Nobody is listening any more; the read side notices and ends the session.
        }
    }

    async Task HandleAsync(QmpInputSplitter.Message message, CancellationToken cancellationToken)
    {
        if (message.Error is { } error)
        {
            SendError(null, QmpException.Generic(error));
            return;
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(message.Json);
        }
        catch (JsonException ex)
        {
            SendError(null, QmpException.Generic($"JSON parse error, {ex.Message}"));
            return;
        }

        using (document)
        {
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
                    id = idValue.Clone();
                }

                var (command, arguments) = ReadCommand(root);
                var result = await ExecuteAsync(command, arguments, cancellationToken).ConfigureAwait(false);
                SendReturn(id, result);
            }
            catch (QmpException ex)
            {
                SendError(id, ex);
            }
        }
    }

    static (string Command, QmpArguments Arguments) ReadCommand(JsonElement root)
    {
        string? command = null;
        var arguments = QmpArguments.Empty;
        foreach (var member in root.EnumerateObject())
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
                case "exec-oob":
                    throw QmpException.Generic("QMP input member 'exec-oob' is unexpected: out-of-band execution is not enabled (no 'oob' capability)");
                default:
                    throw QmpException.Generic($"QMP input member '{member.Name}' is unexpected");
            }
        }

        return (command ?? throw QmpException.Generic("QMP input lacks member 'execute'"), arguments);
    }

    async ValueTask<JsonNode?> ExecuteAsync(string command, QmpArguments arguments, CancellationToken cancellationToken)
    {
        if (command == "qmp_capabilities")
        {
            if (Negotiated)
            {
                throw new QmpException(QmpException.CommandNotFound, "Capabilities negotiation is already complete, command ignored");
            }

            if (arguments.OptionalRaw("enable") is { } enable && (enable.ValueKind != JsonValueKind.Array || enable.GetArrayLength() != 0))
            {
                throw QmpException.Generic("Capability 'oob' is not available");
            }

            arguments.CheckNoneUnexpected();
            Negotiated = true;
            _server.Join(this);
            return null;
        }

        if (!Negotiated)
        {
            throw new QmpException(QmpException.CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");
        }

        if (!_server.Commands.TryGet(command, out var handler))
        {
            throw new QmpException(QmpException.CommandNotFound, $"The command {command} has not been found");
        }

        try
        {
            return await handler(arguments, cancellationToken).ConfigureAwait(false);
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

    void SendError(JsonElement? id, QmpException error) => Send(Serialize(writer =>
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
    static readonly JsonWriterOptions WriterOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

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
