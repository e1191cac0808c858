using System.Buffers;
using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// The client's side of the fixed newstyle handshake (doc/proto.md): STARTTLS when asked for, structured
/// replies, <c>base:allocation</c>, then NBD_OPT_GO with a request for the block sizes (NBD_OPT_EXPORT_NAME
/// only for a server that does not know GO). Everything the server sends is checked before it is believed: a
/// hostile or broken server gets a clear error, never an out-of-range size or a loop.
/// </summary>
public static class NbdClientHandshake
{
    /// <summary>The payload limit QEMU's client and server keep to (NBD_MAX_BUFFER_SIZE): 32 MiB.</summary>
    public const uint MaxBuffer = 32 << 20;

    /// <summary>Largest option reply data read; anything longer is not an answer to what was asked.</summary>
    const int MaxReplyData = 64 << 10;

    /// <summary>Replies to one option read at most (meta contexts, infos); a server that sends more is looping.</summary>
    const int MaxRepliesPerOption = 64;

    /// <summary>
    /// Negotiates <paramref name="export"/> on <paramref name="stream"/>. Returns the stream to transmit on
    /// (the TLS stream when <paramref name="upgradeToTls"/> was given) and what the export is.
    /// </summary>
    public static async Task<(Stream Stream, NbdExportInfo Info)> NegotiateAsync(Stream stream, string export,
        Func<Stream, CancellationToken, ValueTask<Stream>>? upgradeToTls, CancellationToken cancellationToken)
    {
        if (Encoding.UTF8.GetByteCount(export) > 4096)
        {
            throw new BlockOpenException("export name too long to send to server");
        }

        var channel = new OptionChannel(stream);
        var magic = await channel.ReadUInt64Async("Failed to read initial magic", cancellationToken).ConfigureAwait(false);
        if (magic != NbdMagic.Init)
        {
            throw new BlockOpenException("Invalid magic received");
        }

        magic = await channel.ReadUInt64Async("Failed to read server magic", cancellationToken).ConfigureAwait(false);
        if (magic != NbdMagic.Option)
        {
            // The oldstyle handshake has no export names, no options and no TLS: nothing this client needs.
            throw new BlockOpenException(magic == OldstyleMagic
                ? "Server uses the oldstyle handshake, which has no export names; BlockMirror needs a newstyle server"
                : "Bad server magic received");
        }

        var serverFlags = (NbdHandshakeFlags)await channel.ReadUInt16Async("Failed to read server flags", cancellationToken).ConfigureAwait(false);
        if ((serverFlags & NbdHandshakeFlags.FixedNewstyle) == 0)
        {
            throw new BlockOpenException(upgradeToTls is not null
                ? "Server does not support STARTTLS"
                : "Server does not support the fixed newstyle handshake, which BlockMirror needs");
        }

        var noZeroes = (serverFlags & NbdHandshakeFlags.NoZeroes) != 0;
        var clientFlags = NbdClientFlags.FixedNewstyle | (noZeroes ? NbdClientFlags.NoZeroes : NbdClientFlags.None);
        await channel.WriteUInt32Async((uint)clientFlags, "Failed to send clientflags field", cancellationToken).ConfigureAwait(false);

        if (upgradeToTls is not null)
        {
            await channel.RequestAsync(NbdOption.StartTls, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
            var reply = await channel.ReadReplyAsync(NbdOption.StartTls, cancellationToken).ConfigureAwait(false);
            if (reply.IsError)
            {
                throw await channel.ErrorAsync(reply, cancellationToken).ConfigureAwait(false);
            }

            if (reply.Reply != NbdOptionReply.Ack || reply.Length != 0)
            {
                throw new BlockOpenException($"Server rejected request to start TLS {(uint)reply.Reply:x}");
            }

            stream = await upgradeToTls(stream, cancellationToken).ConfigureAwait(false);
            channel = new OptionChannel(stream);
        }

        try
        {
            var structured = await NegotiateStructuredRepliesAsync(channel, cancellationToken).ConfigureAwait(false);
            var context = structured ? await SetAllocationContextAsync(channel, export, cancellationToken).ConfigureAwait(false) : null;
            var info = await GoAsync(channel, export, structured, context, cancellationToken).ConfigureAwait(false)
                ?? await ExportNameAsync(channel, export, noZeroes, cancellationToken).ConfigureAwait(false);
            return (stream, info);
        }
        catch (BlockOpenException)
        {
            // Leave politely (NBD_OPT_ABORT), so the server logs a client that gave up, not a broken one.
            await channel.AbortAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>"IREQMAGIC" of the oldstyle handshake, where newstyle has IHAVEOPT.</summary>
    const ulong OldstyleMagic = 0x00420281861253;

    static async Task<bool> NegotiateStructuredRepliesAsync(OptionChannel channel, CancellationToken cancellationToken)
    {
        await channel.RequestAsync(NbdOption.StructuredReply, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        var reply = await channel.ReadReplyAsync(NbdOption.StructuredReply, cancellationToken).ConfigureAwait(false);
        if (reply.IsError)
        {
            // Unsupported or refused: simple replies do (reads without holes, no block status).
            await channel.SkipAsync(reply.Length, cancellationToken).ConfigureAwait(false);
            return false;
        }

        if (reply.Reply != NbdOptionReply.Ack || reply.Length != 0)
        {
            throw new BlockOpenException($"Unexpected reply type {(uint)reply.Reply:x} to NBD_OPT_STRUCTURED_REPLY");
        }

        return true;
    }

    static readonly byte[] AllocationContextName = "base:allocation"u8.ToArray();

    /// <summary>NBD_OPT_SET_META_CONTEXT for <c>base:allocation</c>: its id, or null when the server has no such context.</summary>
    static async Task<uint?> SetAllocationContextAsync(OptionChannel channel, string export, CancellationToken cancellationToken)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var query = AllocationContextName;
        var data = new byte[4 + name.Length + 4 + 4 + query.Length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4 + name.Length), 1);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(8 + name.Length), (uint)query.Length);
        query.CopyTo(data.AsSpan(12 + name.Length));
        await channel.RequestAsync(NbdOption.SetMetaContext, data, cancellationToken).ConfigureAwait(false);

        uint? id = null;
        for (var count = 0; count < MaxRepliesPerOption; count++)
        {
            var reply = await channel.ReadReplyAsync(NbdOption.SetMetaContext, cancellationToken).ConfigureAwait(false);
            if (reply.IsError)
            {
                if (reply.Reply is NbdOptionReply.ErrUnsupported or NbdOptionReply.ErrUnknown)
                {
                    // No meta contexts here, or this name has none yet (GO reports a missing export in its words).
                    await channel.SkipAsync(reply.Length, cancellationToken).ConfigureAwait(false);
                    return null;
                }

                throw await channel.ErrorAsync(reply, cancellationToken).ConfigureAwait(false);
            }

            if (reply.Reply == NbdOptionReply.Ack)
            {
                return id;
            }

            if (reply.Reply != NbdOptionReply.MetaContext || reply.Length < 4 || reply.Length > 4 + 4096)
            {
                throw new BlockOpenException($"Unexpected reply type {(uint)reply.Reply:x} of length {reply.Length} to NBD_OPT_SET_META_CONTEXT");
            }

            var bytes = await channel.ReadAsync((int)reply.Length, cancellationToken).ConfigureAwait(false);
            if (id is not null || !bytes.AsSpan(4).SequenceEqual(query))
            {
                throw new BlockOpenException($"Server replied with an unexpected meta context '{Encoding.UTF8.GetString(bytes, 4, bytes.Length - 4)}'");
            }

            id = BinaryPrimitives.ReadUInt32BigEndian(bytes);
        }

        throw new BlockOpenException($"Server sent more than {MaxRepliesPerOption} replies to NBD_OPT_SET_META_CONTEXT");
    }

    /// <summary>NBD_OPT_GO asking for the block sizes. Null when the server does not know GO.</summary>
    static async Task<NbdExportInfo?> GoAsync(OptionChannel channel, string export, bool structured, uint? context, CancellationToken cancellationToken)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2 + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + name.Length), 1);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + name.Length), (ushort)NbdInfo.BlockSize);
        await channel.RequestAsync(NbdOption.Go, data, cancellationToken).ConfigureAwait(false);

        ulong? size = null;
        var flags = NbdTransmissionFlags.None;
        uint minimum = 1, preferred = 4096, maximum = MaxBuffer;
        for (var count = 0; count < MaxRepliesPerOption; count++)
        {
            var reply = await channel.ReadReplyAsync(NbdOption.Go, cancellationToken).ConfigureAwait(false);
            if (reply.IsError)
            {
                if (reply.Reply == NbdOptionReply.ErrUnsupported)
                {
                    await channel.SkipAsync(reply.Length, cancellationToken).ConfigureAwait(false);
                    return null;
                }

                throw await channel.ErrorAsync(reply, cancellationToken).ConfigureAwait(false);
            }

            if (reply.Reply == NbdOptionReply.Ack)
            {
                if (size is null)
                {
                    throw new BlockOpenException("server omitted export information");
                }

                return Checked(new NbdExportInfo(size.Value, flags, minimum, preferred, maximum, structured, context));
            }

            if (reply.Reply != NbdOptionReply.Info || reply.Length < 2 || reply.Length > MaxReplyData)
            {
                throw new BlockOpenException($"Unexpected reply type {(uint)reply.Reply:x} of length {reply.Length} to NBD_OPT_GO");
            }

            var bytes = await channel.ReadAsync((int)reply.Length, cancellationToken).ConfigureAwait(false);
            switch ((NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(bytes))
            {
                case NbdInfo.Export when bytes.Length == 12:
                    size = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(2));
                    flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(10));
                    break;
                case NbdInfo.BlockSize when bytes.Length == 14:
                    minimum = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(2));
                    preferred = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(6));
                    maximum = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(10));
                    break;
                case NbdInfo.Export or NbdInfo.BlockSize:
                    throw new BlockOpenException($"Server sent information of the wrong length ({bytes.Length} bytes) in reply to NBD_OPT_GO");
                default:
                    // Name, description, or something newer: nothing the client needs.
                    break;
            }
        }

        throw new BlockOpenException($"Server sent more than {MaxRepliesPerOption} replies to NBD_OPT_GO");
    }

    /// <summary>NBD_OPT_EXPORT_NAME, for servers without GO: the server closes the connection on an unknown name.</summary>
    static async Task<NbdExportInfo> ExportNameAsync(OptionChannel channel, string export, bool noZeroes, CancellationToken cancellationToken)
    {
        await channel.RequestAsync(NbdOption.ExportName, Encoding.UTF8.GetBytes(export), cancellationToken).ConfigureAwait(false);
        var size = await channel.ReadUInt64Async("Failed to read export length", cancellationToken).ConfigureAwait(false);
        var flags = (NbdTransmissionFlags)await channel.ReadUInt16Async("Failed to read export flags", cancellationToken).ConfigureAwait(false);
        if (!noZeroes)
        {
            await channel.SkipAsync(124, cancellationToken).ConfigureAwait(false);
        }

        return Checked(new NbdExportInfo(size, flags, 1, 4096, MaxBuffer, false, null));
    }

    /// <summary>The server's numbers, held to the protocol's rules before the client relies on them.</summary>
    static NbdExportInfo Checked(NbdExportInfo info)
    {
        if (!BitOperations.IsPow2(info.MinimumBlock) || info.MinimumBlock > 64 << 10)
        {
            throw new BlockOpenException($"server minimum block size {info.MinimumBlock} is not a power of two of at most 64 KiB");
        }

        // No stricter than QEMU 7.2's client, so that every server it opens opens here: the maximum need not be a
        // multiple of the minimum (requests are cut to a power of two at most the maximum, which is one).
        if (!BitOperations.IsPow2(info.PreferredBlock) || info.PreferredBlock < info.MinimumBlock)
        {
            throw new BlockOpenException($"server preferred block size {info.PreferredBlock} is not valid");
        }

        if (info.MaximumBlock < info.MinimumBlock)
        {
            throw new BlockOpenException($"server maximum block size {info.MaximumBlock} is not valid");
        }

        if (info.Size > long.MaxValue)
        {
            throw new BlockOpenException($"export size {info.Size} is too large");
        }

        if (info.Size % info.MinimumBlock != 0)
        {
            throw new BlockOpenException($"export size {info.Size} is not a multiple of the minimum block size {info.MinimumBlock}");
        }

        if ((info.Flags & NbdTransmissionFlags.HasFlags) == 0)
        {
            throw new BlockOpenException("server did not set NBD_FLAG_HAS_FLAGS");
        }

        return info;
    }

    /// <summary>Option requests and replies on the stream before transmission: small, few, one at a time.</summary>
    sealed class OptionChannel(Stream stream)
    {
        readonly byte[] _small = new byte[NbdWire.OptionReplyHeaderSize];

        public async Task<ulong> ReadUInt64Async(string what, CancellationToken cancellationToken)
        {
            await FillAsync(8, what, cancellationToken).ConfigureAwait(false);
            return BinaryPrimitives.ReadUInt64BigEndian(_small);
        }

        public async Task<ushort> ReadUInt16Async(string what, CancellationToken cancellationToken)
        {
            await FillAsync(2, what, cancellationToken).ConfigureAwait(false);
            return BinaryPrimitives.ReadUInt16BigEndian(_small);
        }

        public async Task WriteUInt32Async(uint value, string what, CancellationToken cancellationToken)
        {
            var bytes = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
            await SendAsync(bytes, what, cancellationToken).ConfigureAwait(false);
        }

        public async Task RequestAsync(NbdOption option, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
        {
            var writer = new ArrayBufferWriter<byte>(NbdWire.OptionHeaderSize + data.Length);
            NbdWire.WriteOptionHeader(writer, option, (uint)data.Length);
            writer.Write(data.Span);
            await SendAsync(writer.WrittenMemory, $"Failed to send option request {Name(option)}", cancellationToken).ConfigureAwait(false);
        }

        /// <summary>Writes and flushes; a broken connection is reported as what was being sent (QEMU's words).</summary>
        async Task SendAsync(ReadOnlyMemory<byte> bytes, string what, CancellationToken cancellationToken)
        {
            try
            {
                await stream.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
                await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (IOException ex) when (ex is not BlockOpenException)
            {
                throw new BlockOpenException($"{what}: {ex.Message}", BlockErrno.EIO, ex);
            }
        }

        /// <summary>NBD_OPT_ABORT without waiting for its reply (proto.md allows that); a failure to send changes nothing.</summary>
        public async Task AbortAsync()
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                await RequestAsync(NbdOption.Abort, ReadOnlyMemory<byte>.Empty, timeout.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
            {
                // The connection is being dropped anyway.
            }
        }

        public async Task<NbdOptionReplyHeader> ReadReplyAsync(NbdOption option, CancellationToken cancellationToken)
        {
            await FillAsync(NbdWire.OptionReplyHeaderSize, "failed to read option reply", cancellationToken).ConfigureAwait(false);
            var reply = NbdWire.ReadOptionReplyHeader(_small);
            if (reply.Magic != NbdMagic.OptionReply)
            {
                throw new BlockOpenException("Unexpected option reply magic");
            }

            if (reply.Option != option)
            {
                throw new BlockOpenException($"Unexpected option type {(uint)reply.Option:x} expected {(uint)option:x}");
            }

            return reply;
        }

        public async Task<byte[]> ReadAsync(int length, CancellationToken cancellationToken)
        {
            var bytes = new byte[length];
            await ReadExactlyAsync(bytes, "failed to read option reply data", cancellationToken).ConfigureAwait(false);
            return bytes;
        }

        public async Task SkipAsync(uint length, CancellationToken cancellationToken)
        {
            if (length > MaxReplyData)
            {
                throw new BlockOpenException($"server sent {length} bytes of option reply data, over the limit of {MaxReplyData}");
            }

            await ReadAsync((int)length, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>An error reply as QEMU's client words it; the server's own message follows on a line of its own.</summary>
        public async Task<BlockOpenException> ErrorAsync(NbdOptionReplyHeader reply, CancellationToken cancellationToken)
        {
            string? message = null;
            if (reply.Length > 0)
            {
                if (reply.Length > MaxReplyData)
                {
                    return new BlockOpenException("server's error message is too long");
                }

                message = Encoding.UTF8.GetString(await ReadAsync((int)reply.Length, cancellationToken).ConfigureAwait(false));
            }

            var option = (uint)reply.Option;
            var text = reply.Reply switch
            {
                NbdOptionReply.ErrPolicy => $"Denied by server for option {option} ({Name(reply.Option)})",
                NbdOptionReply.ErrInvalid => $"Invalid parameters for option {option} ({Name(reply.Option)})",
                NbdOptionReply.ErrPlatform => $"Server lacks support for option {option} ({Name(reply.Option)})",
                NbdOptionReply.ErrTlsRequired => $"TLS negotiation required before option {option} ({Name(reply.Option)})",
                NbdOptionReply.ErrUnknown => "Requested export not available",
                NbdOptionReply.ErrShutdown => $"Server shutting down before option {option} ({Name(reply.Option)})",
                NbdOptionReply.ErrBlockSizeRequired => $"Server requires INFO_BLOCK_SIZE for option {option} ({Name(reply.Option)})",
                NbdOptionReply.ErrTooBig => $"Server considers option {option} ({Name(reply.Option)}) too large",
                NbdOptionReply.ErrUnsupported => $"Server does not support option {option} ({Name(reply.Option)})",
                _ => $"Unknown error code when asking for option {option} ({Name(reply.Option)})",
            };
            var hint = reply.Reply == NbdOptionReply.ErrTlsRequired ? "Did you forget a valid tls-creds?" : null;
            if (message is not null)
            {
                hint = hint is null ? $"server reported: {message}" : $"server reported: {message}\n{hint}";
            }

            return new BlockOpenException(text, BlockErrno.EINVAL) { Hint = hint };
        }

        static string Name(NbdOption option) => option switch
        {
            NbdOption.ExportName => "export name",
            NbdOption.Abort => "abort",
            NbdOption.List => "list",
            NbdOption.StartTls => "starttls",
            NbdOption.Info => "info",
            NbdOption.Go => "go",
            NbdOption.StructuredReply => "structured reply",
            NbdOption.ListMetaContext => "list meta context",
            NbdOption.SetMetaContext => "set meta context",
            _ => "<unknown>",
        };

        async Task FillAsync(int count, string what, CancellationToken cancellationToken) =>
            await ReadExactlyAsync(_small.AsMemory(0, count), what, cancellationToken).ConfigureAwait(false);

        async Task ReadExactlyAsync(Memory<byte> buffer, string what, CancellationToken cancellationToken)
        {
            try
            {
                await stream.ReadExactlyAsync(buffer, cancellationToken).ConfigureAwait(false);
            }
            catch (EndOfStreamException)
            {
                throw new BlockOpenException($"{what}: Unexpected end-of-file before all data were read");
            }
            catch (IOException ex) when (ex is not BlockOpenException)
            {
                // A reset or another socket error: named by what was being read, not as the first read.
                throw new BlockOpenException($"{what}: {ex.Message}", BlockErrno.EIO, ex);
            }
        }
    }
}
