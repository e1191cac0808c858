using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using BlockMirror.Nbd.Protocol;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// A connection that puts bytes on the wire as the test says, so tests can send what our client
/// (<see cref="Client.NbdClientConnection"/>) never would: writes to read-only exports, bad magics, requests past
/// the end, endless option lists, simple replies only, requests cut at random points. Every field is encoded and
/// decoded by <see cref="NbdWire"/>; tests that need a well-behaved client use ours.
/// </summary>
sealed class RawNbdClient : IAsyncDisposable
{
    readonly Socket _socket;
    Stream _stream;

    RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true) { ReadTimeout = 10_000 };
    }

    public static async Task<RawNbdClient> ConnectAsync(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
        var client = new RawNbdClient(socket);
        var greeting = await client.ReadAsync(18);
        Assert.Equal(NbdMagic.Init, BinaryPrimitives.ReadUInt64BigEndian(greeting));
        Assert.Equal(NbdMagic.Option, BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)));
        await client.WriteAsync(U32((uint)(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)));
        return client;
    }

    /// <summary>An option request, its magic bent when <paramref name="magic"/> says so.</summary>
    public Task SendOptionAsync(NbdOption option, byte[] data, ulong magic = NbdMagic.Option) => WriteAsync(Option(option, data, magic));

    public static byte[] Option(NbdOption option, byte[] data, ulong magic = NbdMagic.Option)
    {
        var bytes = Encode(writer =>
        {
            NbdWire.WriteOptionHeader(writer, option, (uint)data.Length);
            writer.Write(data);
        });
        U64(magic).CopyTo(bytes, 0);
        return bytes;
    }

    public async Task<(NbdOption Option, NbdOptionReply Reply, byte[] Data)> ReadOptionReplyAsync()
    {
        var header = NbdWire.ReadOptionReplyHeader(await ReadAsync(NbdWire.OptionReplyHeaderSize));
        Assert.Equal(NbdMagic.OptionReply, header.Magic);
        return (header.Option, header.Reply, await ReadAsync((int)header.Length));
    }

    /// <summary>Negotiates structured replies and base:allocation (optional), then NBD_OPT_GO; returns size and flags.</summary>
    public async Task<(ulong Size, NbdTransmissionFlags Flags)> GoAsync(string name, bool structured = false)
    {
        if (structured)
        {
            await SendOptionAsync(NbdOption.StructuredReply, []);
            Assert.Equal(NbdOptionReply.Ack, (await ReadOptionReplyAsync()).Reply);
            var nameBytes = Encoding.UTF8.GetBytes(name);
            var query = Encoding.ASCII.GetBytes("base:allocation");
            await SendOptionAsync(NbdOption.SetMetaContext, [.. U32((uint)nameBytes.Length), .. nameBytes, .. U32(1), .. U32((uint)query.Length), .. query]);
            Assert.Equal(NbdOptionReply.MetaContext, (await ReadOptionReplyAsync()).Reply);
            Assert.Equal(NbdOptionReply.Ack, (await ReadOptionReplyAsync()).Reply);
        }

        var bytes = Encoding.UTF8.GetBytes(name);
        await SendOptionAsync(NbdOption.Go, [.. U32((uint)bytes.Length), .. bytes, .. U16(0)]);
        ulong size = 0;
        NbdTransmissionFlags flags = 0;
        while (true)
        {
            var (_, reply, data) = await ReadOptionReplyAsync();
            if (reply == NbdOptionReply.Ack)
            {
                return (size, flags);
            }

            Assert.Equal(NbdOptionReply.Info, reply);
            if (BinaryPrimitives.ReadUInt16BigEndian(data) == (ushort)NbdInfo.Export)
            {
                size = BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
            }
        }
    }

    public Task SendRequestAsync(NbdCommand command, ulong offset, uint length, ulong cookie = 1, NbdCommandFlags flags = 0, byte[]? payload = null, uint magic = NbdMagic.Request) =>
        WriteAsync(Request(command, offset, length, cookie, flags, payload, magic));

    /// <summary>A request and its payload as bytes, its magic bent when <paramref name="magic"/> says so.</summary>
    public static byte[] Request(NbdCommand command, ulong offset, uint length, ulong cookie = 1, NbdCommandFlags flags = 0, byte[]? payload = null, uint magic = NbdMagic.Request)
    {
        var bytes = Encode(writer =>
        {
            NbdWire.WriteRequest(writer, new NbdRequest(flags, command, cookie, offset, length));
            writer.Write<byte>(payload);
        });
        U32(magic).CopyTo(bytes, 0);
        return bytes;
    }

    public async Task<(NbdError Error, ulong Cookie)> ReadSimpleReplyAsync()
    {
        var reply = NbdWire.ReadReplyStart(await ReadAsync(NbdWire.SimpleReplySize), out _);
        Assert.Equal(NbdMagic.SimpleReply, reply.Magic);
        return (reply.Error, reply.Cookie);
    }

    public async Task<(NbdChunkFlags Flags, NbdChunkType Type, ulong Cookie, byte[] Payload)> ReadChunkAsync()
    {
        var header = await ReadAsync(NbdWire.ChunkHeaderSize);
        var chunk = NbdWire.ReadChunkLength(NbdWire.ReadReplyStart(header, out _), header.AsSpan(NbdWire.SimpleReplySize));
        Assert.Equal(NbdMagic.StructuredReply, chunk.Magic);
        return (chunk.Flags, chunk.Type, chunk.Cookie, await ReadAsync((int)chunk.Length));
    }

    /// <summary>
    /// Reads one structured read reply: chunks up to the one flagged done, all of one cookie (this server sends a
    /// reply's chunks together). Returns the cookie, the bytes read (holes as zeroes, every byte covered exactly
    /// once) and the chunks as (type, offset, length) in the order they came. <paramref name="request"/> gives a
    /// cookie's offset and length.
    /// </summary>
    public async Task<(ulong Cookie, byte[] Data, List<(NbdChunkType Type, ulong Offset, int Length)> Chunks)> ReadStructuredReadAsync(Func<ulong, (ulong Offset, int Length)> request)
    {
        ulong? cookie = null;
        byte[] data = [];
        bool[] covered = [];
        var chunks = new List<(NbdChunkType, ulong, int)>();
        while (true)
        {
            var (flags, type, chunkCookie, payload) = await ReadChunkAsync();
            if (cookie is null)
            {
                cookie = chunkCookie;
                data = new byte[request(chunkCookie).Length];
                covered = new bool[data.Length];
            }

            Assert.Equal(cookie, chunkCookie);
            Assert.True(type is NbdChunkType.OffsetData or NbdChunkType.OffsetHole, $"chunk type {type} in a read reply");
            var at = BinaryPrimitives.ReadUInt64BigEndian(payload) - request(chunkCookie).Offset;
            var length = type == NbdChunkType.OffsetHole ? (int)BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(8)) : payload.Length - 8;
            Assert.InRange(at + (ulong)length, (ulong)length, (ulong)data.Length);
            Assert.DoesNotContain(true, covered.AsSpan((int)at, length).ToArray());
            covered.AsSpan((int)at, length).Fill(true);
            if (type == NbdChunkType.OffsetData)
            {
                payload.AsSpan(8).CopyTo(data.AsSpan((int)at));
            }

            chunks.Add((type, at + request(chunkCookie).Offset, length));
            if ((flags & NbdChunkFlags.Done) != 0)
            {
                Assert.DoesNotContain(false, covered);
                return (chunkCookie, data, chunks);
            }
        }
    }

    /// <summary>One read's reply, simple (header, then the data) or structured; <paramref name="request"/> gives a cookie's offset and length.</summary>
    public async Task<(ulong Cookie, byte[] Data)> ReadReadReplyAsync(bool structured, Func<ulong, (ulong Offset, int Length)> request)
    {
        if (structured)
        {
            var (cookie, data, _) = await ReadStructuredReadAsync(request);
            return (cookie, data);
        }

        var (error, simpleCookie) = await ReadSimpleReplyAsync();
        Assert.Equal(NbdError.None, error);
        return (simpleCookie, await ReadAsync(request(simpleCookie).Length));
    }

    /// <summary>True when the server has closed the connection (a read returns end of stream).</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        var buffer = new byte[1];
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            return await _stream.ReadAsync(buffer, timeout.Token) == 0;
        }
        catch (IOException)
        {
            return true;
        }
    }

    public async Task WriteAsync(byte[] bytes)
    {
        await _stream.WriteAsync(bytes);
        await _stream.FlushAsync();
    }

    public async Task<byte[]> ReadAsync(int count)
    {
        var buffer = new byte[count];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await _stream.ReadExactlyAsync(buffer, timeout.Token);
        return buffer;
    }

    public void Abort() => _socket.Close(0);

    /// <summary>After the server acknowledged NBD_OPT_STARTTLS: runs the client side of TLS; the rest goes over the session.</summary>
    public async Task StartTlsAsync(BlockMirror.Net.Tls.TlsCredentials client, string? hostname = "localhost")
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        _stream = await client.AuthenticateAsClientAsync(_stream, hostname, timeout.Token);
    }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync();
}
