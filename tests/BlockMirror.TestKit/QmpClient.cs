using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BlockMirror.TestKit;

/// <summary>
/// A QMP client as a script would be: connects to a monitor socket, negotiates, sends commands and
/// collects every event it sees, in order. Works against qemu-storage-daemon and <c>blockmirror serve</c> alike.
/// </summary>
public sealed class QmpClient : IAsyncDisposable
{
    readonly Socket _socket;
    readonly StreamReader _reader;
    readonly Stream _stream;
    int _nextId;

    QmpClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new StreamReader(_stream, Encoding.UTF8);
    }

    /// <summary>Every event received so far, in order.</summary>
    public List<JsonObject> Events { get; } = [];

    public JsonObject Greeting { get; private set; } = null!;

    /// <summary>Connects (retrying while the daemon starts) and reads the greeting.</summary>
    public static async Task<QmpClient> ConnectAsync(string socketPath, TimeSpan? timeout = null, bool negotiate = true)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
                var client = new QmpClient(socket);
                client.Greeting = await client.ReadObjectAsync(TimeSpan.FromSeconds(10));
                if (negotiate)
                {
                    await client.ExecuteAsync("qmp_capabilities");
                }

                return client;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
                socket.Dispose();
                await Task.Delay(50);
            }
        }
    }

    /// <summary>Sends a command and returns its reply (the whole object: "return" or "error"), keeping events seen meanwhile.</summary>
    public async Task<JsonObject> CommandAsync(string command, JsonObject? arguments = null, TimeSpan? timeout = null)
    {
        var id = $"c{++_nextId}";
        var request = new JsonObject { ["execute"] = command, ["id"] = id };
        if (arguments is not null)
        {
            request["arguments"] = arguments;
        }

        await SendRawAsync(request.ToJsonString() + "\n");
        while (true)
        {
            var message = await ReadObjectAsync(timeout ?? TimeSpan.FromSeconds(30));
            if (message.ContainsKey("event"))
            {
                Events.Add(message);
                continue;
            }

            if (IsRepeatedGreeting(message))
            {
                continue;
            }

            return message;
        }
    }

    /// <summary>Sends a command and returns its "return" value; throws with the error when it failed.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments = null)
    {
        var reply = await CommandAsync(command, arguments);
        return reply.TryGetPropertyValue("return", out var value)
            ? value
            : throw new InvalidOperationException($"{command} failed: {reply.ToJsonString()}");
    }

    public async Task SendRawAsync(string text)
    {
        await _stream.WriteAsync(Encoding.UTF8.GetBytes(text));
        await _stream.FlushAsync();
    }

    public async Task SendRawAsync(ReadOnlyMemory<byte> bytes)
    {
        await _stream.WriteAsync(bytes);
        await _stream.FlushAsync();
    }

    /// <summary>Reads messages until an event of this name arrives (or one seen already, not yet waited for).</summary>
    public async Task<JsonObject> WaitEventAsync(string name, Func<JsonObject, bool>? match = null, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        for (var i = _waited; i < Events.Count; i++)
        {
            if (Is(Events[i], name, match))
            {
                _waited = i + 1;
                return Events[i];
            }
        }

        while (true)
        {
            var message = await ReadObjectAsync(deadline - DateTime.UtcNow);
            if (IsRepeatedGreeting(message))
            {
                continue;
            }

            if (!message.ContainsKey("event"))
            {
                throw new InvalidOperationException($"unexpected reply while waiting for {name}: {message.ToJsonString()}");
            }

            Events.Add(message);
            if (Is(message, name, match))
            {
                _waited = Events.Count;
                return message;
            }
        }
    }

    int _waited;

    /// <summary>
    /// qemu-storage-daemon 7.2 can greet a client twice: its QMP monitor sets its chardev handlers from the
    /// monitor I/O thread while the main loop accepts the connection, and both paths raise "opened" when
    /// they overlap (a client connecting the moment the socket appears, as these tests do). The second
    /// greeting arrives where a command's reply was expected; it carries nothing new, so it is skipped.
    /// Seen once in about two thousand daemon starts (HostileQcow2Tests in CI, 2026-12-07).
    /// </summary>
    static bool IsRepeatedGreeting(JsonObject message) => message.ContainsKey("QMP");

    static bool Is(JsonObject e, string name, Func<JsonObject, bool>? match) =>
        (string?)e["event"] == name && (match is null || match(e));

    /// <summary>Reads the next JSON object from the monitor.</summary>
    public async Task<JsonObject> ReadObjectAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        var line = await _reader.ReadLineAsync(cts.Token) ?? throw new EndOfStreamException("the monitor closed the connection");
        return JsonNode.Parse(line)!.AsObject();
    }

    public async ValueTask DisposeAsync()
    {
        _reader.Dispose();
        await _stream.DisposeAsync();
        _socket.Dispose();
    }
}
