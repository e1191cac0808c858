using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using BlockMirror.Nbd.Protocol;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests.Client;

/// <summary>
/// An NBD server made of a script, on a Unix socket: each connection runs the script, which may say anything,
/// right or wrong, and then hangs up. Its bytes are written with <see cref="NbdWire"/>, the encoder our own
/// server uses. For tests of what the client does with a broken or hostile server.
/// </summary>
sealed class FakeNbdServer : IAsyncDisposable
{
    readonly Socket _listener;
    readonly Task _accepting;
    readonly CancellationTokenSource _stop = new();

    public FakeNbdServer(string socketPath, Func<FakeNbdSession, Task> script)
    {
        SocketPath = socketPath;
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(socketPath));
        _listener.Listen();
        _accepting = AcceptAsync(script);
    }

    public string SocketPath { get; }

    /// <summary>What the scripts threw, other than the client hanging up: a script that went wrong fails the test.</summary>
    public List<Exception> ScriptErrors { get; } = [];

    async Task AcceptAsync(Func<FakeNbdSession, Task> script)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            await using var stream = new NetworkStream(socket, ownsSocket: true);
            try
            {
                await script(new FakeNbdSession(stream)).WaitAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is IOException or EndOfStreamException or OperationCanceledException or ObjectDisposedException)
            {
                // The client left, as it should once it saw something wrong.
            }
            catch (Exception ex)
            {
                lock (ScriptErrors)
                {
                    ScriptErrors.Add(ex);
                }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        await _accepting;
        _stop.Dispose();
    }
}

/// <summary>One connection to a <see cref="FakeNbdServer"/>: the steps of the protocol, each of which a script may bend.</summary>
sealed class FakeNbdSession(Stream stream)
{
    public const int ContextId = 7;

    public Stream Stream => stream;

    public async Task WriteAsync(params byte[][] parts)
    {
        foreach (var part in parts)
        {
            await stream.WriteAsync(part);
        }

        await stream.FlushAsync();
    }

    /// <summary>"NBDMAGIC", "IHAVEOPT" and the handshake flags, any of them bent.</summary>
    public Task GreetAsync(ulong initMagic = NbdMagic.Init, ulong optionMagic = NbdMagic.Option,
        NbdHandshakeFlags flags = NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes) =>
        WriteAsync(U64(initMagic), U64(optionMagic), U16((ushort)flags));

    public async Task<NbdClientFlags> ReadClientFlagsAsync() => (NbdClientFlags)BinaryPrimitives.ReadUInt32BigEndian(await ReadAsync(4));

    /// <summary>The client's next option and its data.</summary>
    public async Task<(NbdOption Option, byte[] Data)> ReadOptionAsync()
    {
        var sequence = new ReadOnlySequence<byte>(await ReadAsync(NbdWire.OptionHeaderSize));
        Assert.True(NbdWire.TryReadOptionHeader(ref sequence, out var header));
        Assert.Equal(NbdMagic.Option, header.Magic);
        return (header.Option, await ReadAsync((int)header.Length));
    }

    /// <summary>An option reply: its header says <paramref name="length"/> (by default the data's length), the data follows.</summary>
    public Task ReplyAsync(NbdOption option, NbdOptionReply reply, byte[]? data = null, uint? length = null)
    {
        var writer = new ArrayBufferWriter<byte>();
        NbdWire.WriteOptionReplyHeader(writer, option, reply, length ?? (uint)(data?.Length ?? 0));
        return WriteAsync(writer.WrittenSpan.ToArray(), data ?? []);
    }

    public static byte[] ExportInfo(ulong size, NbdTransmissionFlags flags) => [.. U16((ushort)NbdInfo.Export), .. U64(size), .. U16((ushort)flags)];

    public static byte[] BlockSizeInfo(uint minimum, uint preferred, uint maximum) =>
        [.. U16((ushort)NbdInfo.BlockSize), .. U32(minimum), .. U32(preferred), .. U32(maximum)];

    public const NbdTransmissionFlags AllCommands = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua |
        NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero;

    /// <summary>
    /// A well-behaved handshake up to GO: structured replies, base:allocation as <see cref="ContextId"/>, and
    /// for GO the infos given (by default the export's size and flags, then block sizes 1/4096/32 MiB) and an ack.
    /// </summary>
    public async Task HandshakeAsync(ulong size = 1 << 20, params byte[][] goInfos)
    {
        await GreetAsync();
        await ReadClientFlagsAsync();
        while (true)
        {
            var (option, _) = await ReadOptionAsync();
            switch (option)
            {
                case NbdOption.StructuredReply:
                    await ReplyAsync(option, NbdOptionReply.Ack);
                    break;
                case NbdOption.SetMetaContext:
                    await ReplyAsync(option, NbdOptionReply.MetaContext, [.. U32(ContextId), .. "base:allocation"u8]);
                    await ReplyAsync(option, NbdOptionReply.Ack);
                    break;
                case NbdOption.Go:
                    foreach (var info in goInfos.Length > 0 ? goInfos : [ExportInfo(size, AllCommands), BlockSizeInfo(1, 4096, 32 << 20)])
                    {
                        await ReplyAsync(option, NbdOptionReply.Info, info);
                    }

                    await ReplyAsync(option, NbdOptionReply.Ack);
                    return;
                default:
                    await ReplyAsync(option, NbdOptionReply.ErrUnsupported);
                    break;
            }
        }
    }

    /// <summary>The client's next request; a write's payload is read too.</summary>
    public async Task<NbdRequest> ReadRequestAsync()
    {
        var sequence = new ReadOnlySequence<byte>(await ReadAsync(NbdWire.RequestSize));
        Assert.True(NbdWire.TryReadRequest(ref sequence, out var magic, out var request));
        Assert.Equal(NbdMagic.Request, magic);
        if (request.Command == NbdCommand.Write)
        {
            await ReadAsync((int)request.Length);
        }

        return request;
    }

    public Task SimpleReplyAsync(ulong cookie, NbdError error = NbdError.None, byte[]? data = null)
    {
        var header = new byte[NbdWire.SimpleReplySize];
        NbdWire.WriteSimpleReply(header, error, cookie);
        return WriteAsync(header, data ?? []);
    }

    /// <summary>A structured reply chunk: its header says <paramref name="length"/> (by default the payload's length).</summary>
    public Task ChunkAsync(ulong cookie, NbdChunkType type, byte[] payload, NbdChunkFlags flags = NbdChunkFlags.Done, uint? length = null)
    {
        var header = new byte[NbdWire.ChunkHeaderSize];
        NbdWire.WriteChunkHeader(header, flags, type, cookie, length ?? (uint)payload.Length);
        return WriteAsync(header, payload);
    }

    public async Task<byte[]> ReadAsync(int count)
    {
        var bytes = new byte[count];
        await stream.ReadExactlyAsync(bytes);
        return bytes;
    }
}
