using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// A client that speaks the protocol byte by byte, so tests can send what real clients never would:
/// writes to read-only exports, bad magics, requests past the end, endless option lists.
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

    public async Task SendOptionAsync(NbdOption option, byte[] data, ulong magic = NbdMagic.Option)
    {
        await WriteAsync([.. U64(magic), .. U32((uint)option), .. U32((uint)data.Length), .. data]);
    }

    public async Task<(NbdOption Option, NbdOptionReply Reply, byte[] Data)> ReadOptionReplyAsync()
    {
        var header = await ReadAsync(20);
        Assert.Equal(NbdMagic.OptionReply, BinaryPrimitives.ReadUInt64BigEndian(header));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        return ((NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)), (NbdOptionReply)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)),
            await ReadAsync((int)length));
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

    public Task SendRequestAsync(NbdCommand command, ulong offset, uint length, ulong cookie = 1, NbdCommandFlags flags = 0, byte[]? payload = null, uint magic = NbdMagic.Request)
    {
        var header = new byte[NbdWire.RequestSize];
        BinaryPrimitives.WriteUInt32BigEndian(header, magic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), length);
        return WriteAsync([.. header, .. payload ?? []]);
    }

    public async Task<(NbdError Error, ulong Cookie)> ReadSimpleReplyAsync()
    {
        var reply = await ReadAsync(NbdWire.SimpleReplySize);
        Assert.Equal(NbdMagic.SimpleReply, BinaryPrimitives.ReadUInt32BigEndian(reply));
        return ((NbdError)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)), BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)));
    }

    public async Task<(NbdChunkFlags Flags, NbdChunkType Type, ulong Cookie, byte[] Payload)> ReadChunkAsync()
    {
        var header = await ReadAsync(NbdWire.ChunkHeaderSize);
        Assert.Equal(NbdMagic.StructuredReply, BinaryPrimitives.ReadUInt32BigEndian(header));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        return ((NbdChunkFlags)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4)), (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)), await ReadAsync((int)length));
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

    public static byte[] U16(ushort v) { var b = new byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, v); return b; }

    public static byte[] U32(uint v) { var b = new byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); return b; }

    public static byte[] U64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, v); return b; }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync();
}
