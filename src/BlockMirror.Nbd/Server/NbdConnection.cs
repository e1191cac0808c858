using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Text;
using BlockMirror.Block.Buffers;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Net.Tls;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// One client: the fixed newstyle handshake (<see cref="HandshakeAsync"/>), then the transmission phase
/// (<see cref="NbdTransmission"/>). Anything that puts the byte stream out of step (a wrong magic, a
/// payload too large to skip, an endless option haggle) closes the connection; every other mistake is
/// answered with the protocol's error and the connection carries on.
/// </summary>
sealed class NbdConnection : IAsyncDisposable
{
    /// <summary>Options one handshake may send before the server gives up on it.</summary>
    internal const int MaxOptions = 256;

    /// <summary>Largest option payload read: names and meta-context queries are at most 4 KiB each.</summary>
    internal const int MaxOptionLength = 64 << 10;

    /// <summary>NBD strings (export names, context queries) are limited to 4 KiB by the protocol.</summary>
    internal const int MaxStringLength = 4096;

    /// <summary>
    /// How long a client may take to reach the transmission phase: QEMU's limit since the fix for CVE-2024-7409
    /// (Debian's 7.2 has it too), so that a client which connects and stays silent does not hold a
    /// <c>max-connections</c> slot for ever.
    /// </summary>
    internal static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(10);

    Stream _stream;
    readonly NbdServer _server;

    /// <summary>Whether NBD_OPT_STARTTLS has made <see cref="Stream"/> a TLS session.</summary>
    bool _tls;

    /// <summary>Why the handshake refused the client, when it ended without an export and not by NBD_OPT_ABORT.</summary>
    string? _refusal;

    /// <param name="client">How the log names the client.</param>
    public NbdConnection(Stream stream, NbdServer server, string client)
    {
        _stream = stream;
        _server = server;
        Client = client;
        (Reader, Writer) = CreatePipes(stream);
    }

    internal string Client { get; }

    internal ILogger Logger => _server.Logger;

    /// <summary>
    /// The handshake's and the request loop's pipes over <paramref name="stream"/>. Both leave the stream open:
    /// DisposeAsync closes it last. (Completing a reader that owned the stream closed it under the writer, whose
    /// completion then failed writing out a reply it still held.) Small reads: in the transmission phase a header
    /// read brings along at most this much of a write payload (copied out of the pipe); the rest of the payload
    /// is read straight into its buffer.
    /// </summary>
    static (PipeReader, PipeWriter) CreatePipes(Stream stream) =>
        (PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 16 << 10, minimumReadSize: 4 << 10, leaveOpen: true)),
         PipeWriter.Create(stream, new StreamPipeWriterOptions(leaveOpen: true)));

    internal PipeReader Reader { get; private set; }

    /// <summary>
    /// The connection's stream under <see cref="Reader"/> and <see cref="Writer"/> (the socket's, or the TLS session
    /// over it after NBD_OPT_STARTTLS): the transmission phase reads write payloads from it and sends replies to it directly.
    /// </summary>
    internal Stream Stream => _stream;

    /// <summary>
    /// The socket under <see cref="Stream"/> when nothing is layered over it (no TLS): replies may then be sent to
    /// it directly, gathered from several buffers in one system call.
    /// </summary>
    internal System.Net.Sockets.Socket? Socket => (_stream as System.Net.Sockets.NetworkStream)?.Socket;

    internal PipeWriter Writer { get; private set; }

    internal AlignedBufferPool Buffers => _server.Buffers;

    internal bool Structured { get; private set; }

    /// <summary>What the last NBD_OPT_SET_META_CONTEXT chose, if any (a failed one chooses nothing).</summary>
    NbdMetaContexts? _metaContexts;

    bool _noZeroes;

    /// <summary>Serves the client until it disconnects, breaks the protocol, or <paramref name="cancellationToken"/> fires.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        NbdExport? export = null;
        try
        {
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                handshake.CancelAfter(HandshakeTimeout);
                export = await HandshakeAsync(handshake.Token).ConfigureAwait(false);
            }

            if (export is null)
            {
                if (_refusal is not null)
                {
                    NbdServerLog.ClientRefused(Logger, Client, _refusal);
                }
                else
                {
                    NbdServerLog.ClientDisconnected(Logger, Client, "NBD_OPT_ABORT in the handshake");
                }

                return;
            }

            NbdServerLog.ClientOpenedExport(Logger, Client, export.Name, Structured ? "structured" : "simple");
            // Contexts chosen for another export than the one opened are none (QEMU's nbd_check_meta_export).
            var contexts = _metaContexts is { } chosen && ReferenceEquals(chosen.Export, export) && chosen.Count > 0 ? chosen : null;
            var transmission = new NbdTransmission(this, export, Structured, contexts);
            await using (transmission.ConfigureAwait(false))
            {
                var end = await transmission.RunAsync(cancellationToken).ConfigureAwait(false);
                if (end is null)
                {
                    NbdServerLog.ClientDisconnected(Logger, Client, "NBD_CMD_DISC");
                }
                else
                {
                    NbdServerLog.ClientDropped(Logger, Client, "in transmission", end);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or NbdProtocolException or ObjectDisposedException or TlsException)
        {
            // The client went away, broke the protocol or failed the TLS handshake: closing the connection is the
            // whole answer; the log says which.
            LogEnd(ex, export is null, cancellationToken.IsCancellationRequested);
        }
        finally
        {
            if (export is not null)
            {
                Interlocked.Decrement(ref export.Clients);
            }
        }
    }

    internal const string ResetReason = "connection reset by the client";

    /// <summary>Whether a read or a send failed because the client reset the connection.</summary>
    internal static bool IsReset(Exception? ex) =>
        ex is IOException { InnerException: System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.ConnectionReset } };

    /// <summary>Logs why a connection ended by an exception: the server stopping, or the client's doing.</summary>
    void LogEnd(Exception ex, bool inHandshake, bool serverStopping)
    {
        if (serverStopping || ex is ObjectDisposedException)
        {
            NbdServerLog.ClientDisconnected(Logger, Client, "the server is stopping");
            return;
        }

        if (!Logger.IsEnabled(LogLevel.Warning))
        {
            return;
        }

        var reason = ex switch
        {
            EndOfStreamException => $"EOF: {ex.Message}",
            _ when IsReset(ex) => ResetReason,
            IOException { InnerException: System.Net.Sockets.SocketException socket } => $"socket error: {socket.Message}",
            OperationCanceledException => $"no export chosen within {HandshakeTimeout.TotalSeconds:0} s",
            NbdProtocolException => $"protocol error: {ex.Message}",
            TlsException => $"TLS failure: {ex.Message}",
            _ => ex.Message,
        };
        NbdServerLog.ClientDropped(Logger, Client, inHandshake ? "in the handshake" : "in transmission", reason);
    }

    /// <summary>
    /// The fixed newstyle handshake. Returns the export the client chose, or null when the connection is to
    /// be closed (NBD_OPT_ABORT, an unknown export by NBD_OPT_EXPORT_NAME, too many options).
    /// </summary>
    async Task<NbdExport?> HandshakeAsync(CancellationToken cancellationToken)
    {
        NbdWire.WriteUInt64(Writer, NbdMagic.Init);
        NbdWire.WriteUInt64(Writer, NbdMagic.Option);
        NbdWire.WriteUInt16(Writer, (ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes));
        await Writer.FlushAsync(cancellationToken).ConfigureAwait(false);

        var clientFlags = (NbdClientFlags)BinaryPrimitives.ReadUInt32BigEndian(await ReadBytesAsync(4, cancellationToken).ConfigureAwait(false));
        if ((clientFlags & ~(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)) != 0)
        {
            // proto.md: a server that does not know a client flag must close the connection.
            _refusal = $"unknown client flags 0x{(uint)clientFlags:x}";
            return null;
        }

        _noZeroes = (clientFlags & NbdClientFlags.NoZeroes) != 0;
        for (var count = 0; count < MaxOptions; count++)
        {
            var headerBytes = await ReadBytesAsync(NbdWire.OptionHeaderSize, cancellationToken).ConfigureAwait(false);
            var sequence = new ReadOnlySequence<byte>(headerBytes);
            NbdWire.TryReadOptionHeader(ref sequence, out var header);
            if (header.Magic != NbdMagic.Option)
            {
                throw new NbdProtocolException($"option magic 0x{header.Magic:x16} instead of IHAVEOPT");
            }

            if (header.Length > MaxOptionLength)
            {
                await OptionReplyAsync(header.Option, NbdOptionReply.ErrTooBig,
                    $"option data of {header.Length} bytes is over the limit of {MaxOptionLength}", cancellationToken).ConfigureAwait(false);
                _refusal = $"option {header.Option} with {header.Length} bytes of data, over the limit of {MaxOptionLength}";
                return null;
            }

            var data = await ReadBytesAsync((int)header.Length, cancellationToken).ConfigureAwait(false);
            if (header.Option == NbdOption.StartTls && data.Length != 0)
            {
                // A client that cannot even ask for TLS correctly is not worth another try (QEMU drops it too).
                await OptionReplyAsync(header.Option, NbdOptionReply.ErrInvalid, "option 'starttls' has unexpected length", cancellationToken).ConfigureAwait(false);
                _refusal = "NBD_OPT_STARTTLS with data";
                return null;
            }

            if (_server.Tls is { } tls && !_tls)
            {
                if (!await BeforeTlsAsync(tls, header.Option, cancellationToken).ConfigureAwait(false))
                {
                    return null;
                }

                continue;
            }

            var (done, export) = await HandleOptionAsync(header.Option, data, cancellationToken).ConfigureAwait(false);
            if (done)
            {
                if (export is not null)
                {
                    Interlocked.Increment(ref export.Clients);
                }

                return export;
            }
        }

        // An option haggle that never ends: the client had its chance.
        _refusal = $"no export chosen in {MaxOptions} options";
        return null;
    }

    /// <summary>
    /// An option on a server with TLS before the client started it: only NBD_OPT_STARTTLS is served. Every other
    /// option gets NBD_REP_ERR_TLS_REQD and the client may try again; NBD_OPT_ABORT gets it too and ends the
    /// connection, and NBD_OPT_EXPORT_NAME, which has no way to carry an error, ends it at once (QEMU's server
    /// does all three alike). Returns false when the connection is to be closed.
    /// </summary>
    async Task<bool> BeforeTlsAsync(TlsCredentials tls, NbdOption option, CancellationToken cancellationToken)
    {
        switch (option)
        {
            case NbdOption.StartTls:
                await OptionReplyAsync(option, NbdOptionReply.Ack, null, cancellationToken).ConfigureAwait(false);
                await StartTlsAsync(tls, cancellationToken).ConfigureAwait(false);
                return true;
            case NbdOption.ExportName:
                _refusal = "NBD_OPT_EXPORT_NAME before TLS was started";
                return false;
            case NbdOption.Abort:
                await AcknowledgeAbortAsync(NbdOptionReply.ErrTlsRequired, $"Option 0x{(uint)option:x} not permitted before TLS", cancellationToken).ConfigureAwait(false);
                return false;
            default:
                await OptionReplyAsync(option, NbdOptionReply.ErrTlsRequired, $"Option 0x{(uint)option:x} not permitted before TLS", cancellationToken).ConfigureAwait(false);
                return true;
        }
    }

    /// <summary>
    /// The reply to NBD_OPT_ABORT, if the client still takes it. proto.md lets a client send the abort and close
    /// without waiting for the reply, and libnbd does (<c>nbdinfo --list</c>, <c>qemu-nbd --list</c> through
    /// QEMU's client end their listing the same way): a send that finds the client gone is the end it asked for,
    /// not a dropped connection worth a warning.
    /// </summary>
    async Task AcknowledgeAbortAsync(NbdOptionReply reply, string? message, CancellationToken cancellationToken)
    {
        try
        {
            await OptionReplyAsync(NbdOption.Abort, reply, message, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>
    /// Runs the server side of the TLS handshake over the connection's stream and moves the handshake and the
    /// transmission phase onto the session.
    /// </summary>
    async Task StartTlsAsync(TlsCredentials tls, CancellationToken cancellationToken)
    {
        // The client must wait for our reply before its TLS hello; bytes already buffered would be lost to the
        // session (and are the protocol broken).
        if (Reader.TryRead(out var pending))
        {
            var early = !pending.Buffer.IsEmpty;
            Reader.AdvanceTo(pending.Buffer.Start);
            if (early)
            {
                throw new NbdProtocolException("data after NBD_OPT_STARTTLS before the TLS handshake");
            }
        }

        await Reader.CompleteAsync().ConfigureAwait(false);
        await Writer.CompleteAsync().ConfigureAwait(false);
        _stream = await tls.AuthenticateAsServerAsync(_stream, cancellationToken).ConfigureAwait(false);
        _tls = true;
        (Reader, Writer) = CreatePipes(_stream);
    }

    /// <summary>One option. Returns done when the handshake is over: with the export to serve, or null to close.</summary>
    async Task<(bool Done, NbdExport? Export)> HandleOptionAsync(NbdOption option, byte[] data, CancellationToken cancellationToken)
    {
        switch (option)
        {
            case NbdOption.ExportName:
            {
                // No way to report an error here: an unknown name closes the connection (proto.md).
                var name = Encoding.UTF8.GetString(data);
                var export = _server.FindExport(name);
                if (export is null)
                {
                    _refusal = $"NBD_OPT_EXPORT_NAME of an unknown export '{name}'";
                    return (true, null);
                }

                NbdWire.WriteUInt64(Writer, (ulong)export.Edge.Node.Length);
                NbdWire.WriteUInt16(Writer, (ushort)TransmissionFlags(export));
                if (!_noZeroes)
                {
                    Writer.Write(new byte[124]);
                }

                await Writer.FlushAsync(cancellationToken).ConfigureAwait(false);
                return (true, export);
            }

            case NbdOption.Abort:
                await AcknowledgeAbortAsync(NbdOptionReply.Ack, null, cancellationToken).ConfigureAwait(false);
                return (true, null);

            case NbdOption.List:
                if (data.Length != 0)
                {
                    await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, "NBD_OPT_LIST takes no data", cancellationToken).ConfigureAwait(false);
                    break;
                }

                foreach (var export in _server.Exports)
                {
                    var name = Encoding.UTF8.GetBytes(export.Name);
                    var description = Encoding.UTF8.GetBytes(export.Description ?? "");
                    NbdWire.WriteOptionReplyHeader(Writer, option, NbdOptionReply.Server, (uint)(4 + name.Length + description.Length));
                    NbdWire.WriteUInt32(Writer, (uint)name.Length);
                    Writer.Write(name);
                    Writer.Write(description);
                }

                await OptionReplyAsync(option, NbdOptionReply.Ack, null, cancellationToken).ConfigureAwait(false);
                break;

            case NbdOption.Info:
            case NbdOption.Go:
                return await HandleInfoAsync(option, data, cancellationToken).ConfigureAwait(false);

            case NbdOption.StructuredReply:
                if (data.Length != 0)
                {
                    await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data", cancellationToken).ConfigureAwait(false);
                }
                else if (Structured)
                {
                    await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, "structured replies are already negotiated", cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    Structured = true;
                    await OptionReplyAsync(option, NbdOptionReply.Ack, null, cancellationToken).ConfigureAwait(false);
                }

                break;

            case NbdOption.ListMetaContext:
            case NbdOption.SetMetaContext:
                await HandleMetaContextAsync(option, data, cancellationToken).ConfigureAwait(false);
                break;

            case NbdOption.StartTls:
                // QEMU's replies: a second STARTTLS is invalid; on a server without TLS it is refused by policy.
                await OptionReplyAsync(option, _tls ? NbdOptionReply.ErrInvalid : NbdOptionReply.ErrPolicy,
                    _tls ? "TLS already enabled" : "TLS not configured", cancellationToken).ConfigureAwait(false);
                break;

            default:
                await OptionReplyAsync(option, NbdOptionReply.ErrUnsupported, $"option {(uint)option} is not supported", cancellationToken).ConfigureAwait(false);
                break;
        }

        return (false, null);
    }

    /// <summary>NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 count, count × u16 information request.</summary>
    async Task<(bool Done, NbdExport? Export)> HandleInfoAsync(NbdOption option, byte[] data, CancellationToken cancellationToken)
    {
        var span = data.AsSpan();
        if (span.Length < 6 || BinaryPrimitives.ReadUInt32BigEndian(span) is var nameLength && nameLength > MaxStringLength ||
            span.Length < 4 + (int)nameLength + 2)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, "malformed export name", cancellationToken).ConfigureAwait(false);
            return (false, null);
        }

        var name = Encoding.UTF8.GetString(span.Slice(4, (int)nameLength));
        var rest = span[(4 + (int)nameLength)..];
        var requests = BinaryPrimitives.ReadUInt16BigEndian(rest);
        if (rest.Length != 2 + 2 * requests)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, "malformed information request list", cancellationToken).ConfigureAwait(false);
            return (false, null);
        }

        var export = _server.FindExport(name);
        if (export is null)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrUnknown, $"export '{name}' not present", cancellationToken).ConfigureAwait(false);
            return (false, null);
        }

        bool wantName = false, wantDescription = false;
        for (var i = 0; i < requests; i++)
        {
            switch ((NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(rest[(2 + 2 * i)..]))
            {
                case NbdInfo.Name: wantName = true; break;
                case NbdInfo.Description: wantDescription = true; break;
            }
        }

        NbdWire.WriteOptionReplyHeader(Writer, option, NbdOptionReply.Info, 12);
        NbdWire.WriteUInt16(Writer, (ushort)NbdInfo.Export);
        NbdWire.WriteUInt64(Writer, (ulong)export.Edge.Node.Length);
        NbdWire.WriteUInt16(Writer, (ushort)TransmissionFlags(export));
        if (wantName)
        {
            var bytes = Encoding.UTF8.GetBytes(export.Name);
            NbdWire.WriteOptionReplyHeader(Writer, option, NbdOptionReply.Info, (uint)(2 + bytes.Length));
            NbdWire.WriteUInt16(Writer, (ushort)NbdInfo.Name);
            Writer.Write(bytes);
        }

        if (wantDescription && export.Description is not null)
        {
            var bytes = Encoding.UTF8.GetBytes(export.Description);
            NbdWire.WriteOptionReplyHeader(Writer, option, NbdOptionReply.Info, (uint)(2 + bytes.Length));
            NbdWire.WriteUInt16(Writer, (ushort)NbdInfo.Description);
            Writer.Write(bytes);
        }

        // Block sizes, always. Minimum 1: the node pads any byte range to its driver's alignment. Preferred:
        // that alignment, at least 4 KiB, so that a client that follows it never makes the node
        // read-modify-write (QEMU advertises the same). Maximum: the payload limit; the node cuts what its
        // driver cannot take in one piece.
        NbdWire.WriteOptionReplyHeader(Writer, option, NbdOptionReply.Info, 14);
        NbdWire.WriteUInt16(Writer, (ushort)NbdInfo.BlockSize);
        NbdWire.WriteUInt32(Writer, 1);
        NbdWire.WriteUInt32(Writer, (uint)Math.Max(4096, export.Edge.Node.Limits.RequestAlignment));
        NbdWire.WriteUInt32(Writer, NbdTransmission.MaxPayload);
        await OptionReplyAsync(option, NbdOptionReply.Ack, null, cancellationToken).ConfigureAwait(false);
        return option == NbdOption.Go ? (true, export) : (false, null);
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: u32 export name length, name, u32 query count,
    /// then per query u32 length and the query. As QEMU's server: a SET needs structured replies (a LIST does not)
    /// and forgets the previous choice before it reads anything; a query longer than the protocol's 4 KiB names
    /// nothing and is skipped; a listing without queries lists every context of the export.
    /// </summary>
    async Task HandleMetaContextAsync(NbdOption option, byte[] data, CancellationToken cancellationToken)
    {
        var set = option == NbdOption.SetMetaContext;
        if (set)
        {
            _metaContexts = null;
            if (!Structured)
            {
                await OptionReplyAsync(option, NbdOptionReply.ErrInvalid,
                    "request option 'NBD_OPT_SET_META_CONTEXT' when structured reply is not negotiated", cancellationToken).ConfigureAwait(false);
                return;
            }
        }

        var span = data.AsSpan();
        if ((ReadMetaString(ref span, out var name) ?? (name is null ? $"Invalid name length: over {MaxStringLength} bytes" : null)) is { } nameProblem)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, nameProblem, cancellationToken).ConfigureAwait(false);
            return;
        }

        if (_server.FindExport(name!) is not { } export)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrUnknown, $"export '{name}' not present", cancellationToken).ConfigureAwait(false);
            return;
        }

        var contexts = new NbdMetaContexts(export);
        if (span.Length < 4)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, "Inconsistent lengths in option: no query count", cancellationToken).ConfigureAwait(false);
            return;
        }

        var count = BinaryPrimitives.ReadUInt32BigEndian(span);
        span = span[4..];
        if (!set && count == 0)
        {
            contexts.SelectAll();
        }

        // The option's data is bounded (MaxOptionLength), and every query takes at least its 4-byte length: a
        // count the data cannot hold ends in the inconsistent-length reply, not in a long loop.
        for (var i = 0u; i < count; i++)
        {
            if (ReadMetaString(ref span, out var query) is { } queryProblem)
            {
                await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, queryProblem, cancellationToken).ConfigureAwait(false);
                return;
            }

            if (query is not null)
            {
                contexts.Apply(query, list: !set);
            }
        }

        if (!span.IsEmpty)
        {
            await OptionReplyAsync(option, NbdOptionReply.ErrInvalid, $"Inconsistent lengths in option: {span.Length} bytes after the last query", cancellationToken).ConfigureAwait(false);
            return;
        }

        foreach (var (context, id) in contexts.Selected())
        {
            NbdWire.WriteOptionReplyHeader(Writer, option, NbdOptionReply.MetaContext, (uint)(4 + Encoding.UTF8.GetByteCount(context)));
            // A listing names contexts without choosing them: its ids are 0 (proto.md).
            NbdWire.WriteUInt32(Writer, set ? id : 0);
            Writer.Write(Encoding.UTF8.GetBytes(context));
        }

        await OptionReplyAsync(option, NbdOptionReply.Ack, null, cancellationToken).ConfigureAwait(false);
        if (set)
        {
            _metaContexts = contexts;
        }
    }

    /// <summary>
    /// Takes a u32 length and that many bytes of UTF-8 off <paramref name="span"/>. Returns why it cannot (for an
    /// NBD_REP_ERR_INVALID), or null: then <paramref name="value"/> is the string, or null for one over the
    /// protocol's 4 KiB, which is skipped (QEMU skips such a query; an export name that long is refused).
    /// </summary>
    static string? ReadMetaString(ref Span<byte> span, out string? value)
    {
        value = null;
        if (span.Length < 4 || span.Length - 4 < BinaryPrimitives.ReadUInt32BigEndian(span))
        {
            return "Inconsistent lengths in option";
        }

        var length = (int)BinaryPrimitives.ReadUInt32BigEndian(span);
        var bytes = span.Slice(4, length);
        span = span[(4 + length)..];
        if (length > MaxStringLength)
        {
            return null;
        }

        if (bytes.Contains((byte)0))
        {
            return "Unexpected embedded NUL in option";
        }

        value = Encoding.UTF8.GetString(bytes);
        return null;
    }

    /// <summary>An option reply with an optional UTF-8 message (errors carry one for the client's log).</summary>
    async ValueTask OptionReplyAsync(NbdOption option, NbdOptionReply reply, string? message, CancellationToken cancellationToken)
    {
        if (((uint)reply & 0x80000000) != 0)
        {
            NbdServerLog.OptionRefused(Logger, Client, option, reply, message ?? "");
        }

        var bytes = message is null ? [] : Encoding.UTF8.GetBytes(message);
        NbdWire.WriteOptionReplyHeader(Writer, option, reply, (uint)bytes.Length);
        Writer.Write(bytes);
        await Writer.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    NbdTransmissionFlags TransmissionFlags(NbdExport export)
    {
        var flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua |
            NbdTransmissionFlags.SendCache;
        if (_server.MaxConnections != 1)
        {
            // Every connection reaches the same node, and a flush on one covers writes made on all; a server that
            // takes one client at a time says not to try more (QEMU's rule).
            flags |= NbdTransmissionFlags.CanMultiConn;
        }

        flags |= export.Writable
            ? NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero
            : NbdTransmissionFlags.ReadOnly;
        if (Structured)
        {
            // A read is split into data and hole chunks unless the client asks for one chunk with "don't fragment".
            flags |= NbdTransmissionFlags.SendDf;
        }

        return flags;
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes (handshake only: it allocates).</summary>
    async ValueTask<byte[]> ReadBytesAsync(int count, CancellationToken cancellationToken)
    {
        if (count == 0)
        {
            return [];
        }

        var result = await Reader.ReadAtLeastAsync(count, cancellationToken).ConfigureAwait(false);
        if (result.Buffer.Length < count)
        {
            throw new EndOfStreamException("the client closed the connection during the handshake");
        }

        var bytes = result.Buffer.Slice(0, count).ToArray();
        Reader.AdvanceTo(result.Buffer.GetPosition(count));
        return bytes;
    }

    public async ValueTask DisposeAsync()
    {
        await Reader.CompleteAsync().ConfigureAwait(false);
        try
        {
            // Writes out whatever the writer still holds; the client may be gone already.
            await Writer.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
        }

        await _stream.DisposeAsync().ConfigureAwait(false);
    }
}
