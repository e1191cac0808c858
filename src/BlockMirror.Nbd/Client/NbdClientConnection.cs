using System.Buffers.Binary;
using System.Text;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// The transmission phase of one client connection: up to <see cref="MaxInFlight"/> requests on the wire
/// at once, replies matched to requests by cookie as they arrive, in any order (simple or structured).
/// </summary>
/// <remarks>
/// <para>Sending: one request at a time holds the send gate while it writes its header (and a write's payload)
/// to the stream. Receiving: one loop reads reply headers and puts read data straight into the requester's
/// buffer (data chunks at their offset, holes cleared), so a read is copied once, from the socket.</para>
/// <para>A request on the wire is never abandoned: the server may still answer into its buffer, so its
/// caller waits for the reply or for the connection to fail, whatever its cancellation token says.</para>
/// <para>Anything the server sends that the protocol does not allow (an unknown cookie, a chunk outside its
/// request, a wrong magic) ends the connection: the byte stream can no longer be trusted. Every waiting
/// request then fails with <see cref="NbdConnectionLostException"/>, and so does every later one.</para>
/// </remarks>
public sealed class NbdClientConnection : IAsyncDisposable
{
    /// <summary>Requests on the wire at once (QEMU's client and our server both take 16).</summary>
    public const int MaxInFlight = 16;

    /// <summary>Largest block-status or error payload read; a longer one is not an answer to one extent.</summary>
    const int MaxMetadataPayload = 1 << 20;

    readonly Stream _stream;
    readonly NbdClientRequest[] _requests = new NbdClientRequest[MaxInFlight];
    readonly Stack<NbdClientRequest> _free = new(MaxInFlight);
    readonly Lock _freeLock = new();
    readonly SemaphoreSlim _slots = new(MaxInFlight, MaxInFlight);
    readonly SemaphoreSlim _sendGate = new(1, 1);
    readonly byte[] _replyHeader = new byte[NbdWire.ChunkHeaderSize];
    readonly byte[] _scratch = new byte[64];
    readonly Task _receiving;
    volatile Exception? _failure;
    volatile bool _receiveEnded;

    NbdClientConnection(Stream stream, NbdExportInfo info)
    {
        _stream = stream;
        Info = info;
        for (var i = MaxInFlight - 1; i >= 0; i--)
        {
            _requests[i] = new NbdClientRequest(i);
            _free.Push(_requests[i]);
        }

        _receiving = Task.Run(ReceiveLoopAsync);
    }

    public NbdExportInfo Info { get; }

    /// <summary>Why the connection ended, once it has.</summary>
    public Exception? Failure => _failure;

    /// <summary>Completes when the connection has ended (<see cref="Failure"/> says why) and no request waits on it; never faults.</summary>
    public Task Completion => _receiving;

    /// <summary>Runs the handshake on <paramref name="stream"/> and starts the transmission phase.</summary>
    public static async Task<NbdClientConnection> OpenAsync(Stream stream, string export,
        Func<Stream, CancellationToken, ValueTask<Stream>>? upgradeToTls, CancellationToken cancellationToken)
    {
        var (transport, info) = await NbdClientHandshake.NegotiateAsync(stream, export, upgradeToTls, cancellationToken).ConfigureAwait(false);
        return new NbdClientConnection(transport, info);
    }

    /// <summary>
    /// Sends one request and waits for its whole reply. A read fills <paramref name="readBuffer"/>; a block
    /// status returns the first extent. The server's error comes back in the request (see <see cref="NbdClientRequest.Error"/>)
    /// for the caller to word; a lost connection throws <see cref="NbdConnectionLostException"/>.
    /// </summary>
    public async ValueTask<NbdReplyResult> RequestAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length,
        Memory<byte> readBuffer, ReadOnlyMemory<byte> writePayload, CancellationToken cancellationToken)
    {
        ThrowIfFailed();
        await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
        NbdClientRequest request;
        lock (_freeLock)
        {
            request = _free.Pop();
        }

        try
        {
            await _sendGate.WaitAsync(cancellationToken).ConfigureAwait(false);
            var started = false;
            try
            {
                // Started under the lock Fail takes: either Fail sees the request and fails it, or the request
                // sees the failure and is never sent.
                lock (_freeLock)
                {
                    ThrowIfFailed();
                    request.Start(command, offset, length, readBuffer);
                    started = true;
                }

                // From here the request is the server's: it is sent whole, or the connection is failed.
                NbdWire.WriteRequest(request.Header, new NbdRequest(flags, command, request.Cookie, (ulong)offset, (uint)length));
                await _stream.WriteAsync(request.Header, CancellationToken.None).ConfigureAwait(false);
                if (!writePayload.IsEmpty)
                {
                    await _stream.WriteAsync(writePayload, CancellationToken.None).ConfigureAwait(false);
                }

                await _stream.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (started && ex is not NbdConnectionLostException)
            {
                // The receive loop may have failed the request already (the same broken socket): either way its
                // caller learns of it below as a lost connection, which the driver may send again.
                Fail(new NbdConnectionLostException($"Failed to send request: {ex.Message}", ex));
            }
            finally
            {
                _sendGate.Release();
            }

            await request.WaitAsync().ConfigureAwait(false);
            if (request.Failure is not null)
            {
                throw new NbdConnectionLostException(request.Failure.Message, request.Failure);
            }

            return new NbdReplyResult(request.Error, request.ErrorMessage, request.Extent);
        }
        finally
        {
            // Busy only if the request never went out; otherwise its reply (or the failure) has come.
            lock (_freeLock)
            {
                _free.Push(request);
            }

            _slots.Release();
        }
    }

    void ThrowIfFailed()
    {
        if (_failure is { } failure)
        {
            throw new NbdConnectionLostException(failure.Message, failure);
        }
    }

    /// <summary>Ends the connection: every request waiting fails, and so will every new one.</summary>
    void Fail(Exception failure)
    {
        lock (_freeLock)
        {
            if (_failure is not null)
            {
                return;
            }

            _failure = failure;
        }

        try
        {
            _stream.Dispose();
        }
        catch (IOException)
        {
            // Closing a broken stream may complain; it is closed either way.
        }

        // Only the receive loop writes into read buffers: while it runs, it fails the waiting requests itself
        // when the closed stream stops it, so no buffer is handed back while a read may still land in it.
        if (_receiveEnded)
        {
            FailWaiting(failure);
        }
    }

    void FailWaiting(Exception failure)
    {
        foreach (var request in _requests)
        {
            request.Fail(failure);
        }
    }

    async Task ReceiveLoopAsync()
    {
        try
        {
            while (true)
            {
                await ReadExactlyAsync(_replyHeader.AsMemory(0, NbdWire.SimpleReplySize)).ConfigureAwait(false);
                var reply = NbdWire.ReadReplyStart(_replyHeader, out var more);
                if (reply.Magic is not NbdMagic.SimpleReply and not NbdMagic.StructuredReply)
                {
                    throw new NbdProtocolException($"reply magic 0x{reply.Magic:x8} is neither a simple nor a structured reply");
                }

                if (more > 0)
                {
                    await ReadExactlyAsync(_replyHeader.AsMemory(NbdWire.SimpleReplySize, more)).ConfigureAwait(false);
                    reply = NbdWire.ReadChunkLength(reply, _replyHeader.AsSpan(NbdWire.SimpleReplySize));
                }

                var request = Find(reply.Cookie);
                if (reply.IsStructured)
                {
                    await ReceiveChunkAsync(request, reply).ConfigureAwait(false);
                }
                else
                {
                    await ReceiveSimpleAsync(request, reply).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex)
        {
            Fail(ex switch
            {
                EndOfStreamException => new NbdConnectionLostException("Connection closed by the NBD server", ex),
                NbdProtocolException => new NbdConnectionLostException($"NBD server broke the protocol: {ex.Message}", ex),
                NbdConnectionLostException => ex,
                _ => new NbdConnectionLostException($"Connection to the NBD server failed: {ex.Message}", ex),
            });
            _receiveEnded = true;
            FailWaiting(_failure!);
        }
    }

    NbdClientRequest Find(ulong cookie)
    {
        var index = (int)(cookie & 0xffff);
        if (cookie >> 32 != 0 || index >= MaxInFlight || _requests[index] is not { Busy: true } request || request.Cookie != cookie)
        {
            throw new NbdProtocolException($"reply for cookie 0x{cookie:x}, which no request in flight has");
        }

        return request;
    }

    async Task ReceiveSimpleAsync(NbdClientRequest request, NbdReplyHeader reply)
    {
        if (reply.Error != NbdError.None)
        {
            request.SetError(reply.Error, null);
        }
        else if (request.Command == NbdCommand.Read)
        {
            if (Info.Structured)
            {
                throw new NbdProtocolException("a simple reply with data to a read, where structured replies were agreed");
            }

            await ReadExactlyAsync(request.ReadBuffer).ConfigureAwait(false);
        }

        request.Complete();
    }

    async Task ReceiveChunkAsync(NbdClientRequest request, NbdReplyHeader chunk)
    {
        if (!Info.Structured)
        {
            throw new NbdProtocolException("a structured reply, where none were agreed");
        }

        var length = chunk.Length;
        switch (chunk.Type)
        {
            case NbdChunkType.None:
                if (length != 0 || (chunk.Flags & NbdChunkFlags.Done) == 0)
                {
                    throw new NbdProtocolException("NBD_REPLY_TYPE_NONE with a payload or without NBD_REPLY_FLAG_DONE");
                }

                break;

            case NbdChunkType.OffsetData:
            {
                if (request.Command != NbdCommand.Read || length <= 8)
                {
                    throw new NbdProtocolException($"a data chunk of {length} bytes for a {request.Command} request");
                }

                await ReadExactlyAsync(_scratch.AsMemory(0, 8)).ConfigureAwait(false);
                var (start, count) = Within(request, BinaryPrimitives.ReadUInt64BigEndian(_scratch), length - 8);
                await ReadExactlyAsync(request.ReadBuffer.Slice(start, count)).ConfigureAwait(false);
                request.Covered += count;
                break;
            }

            case NbdChunkType.OffsetHole:
            {
                if (request.Command != NbdCommand.Read || length != 12)
                {
                    throw new NbdProtocolException($"a hole chunk of {length} bytes for a {request.Command} request");
                }

                await ReadExactlyAsync(_scratch.AsMemory(0, 12)).ConfigureAwait(false);
                var (start, count) = Within(request, BinaryPrimitives.ReadUInt64BigEndian(_scratch), BinaryPrimitives.ReadUInt32BigEndian(_scratch.AsSpan(8)));
                request.ReadBuffer.Span.Slice(start, count).Clear();
                request.Covered += count;
                break;
            }

            case NbdChunkType.BlockStatus:
            {
                if (request.Command != NbdCommand.BlockStatus || length < 12 || (length - 4) % 8 != 0 || length > MaxMetadataPayload)
                {
                    throw new NbdProtocolException($"a block-status chunk of {length} bytes for a {request.Command} request");
                }

                await ReadExactlyAsync(_scratch.AsMemory(0, 12)).ConfigureAwait(false);
                if (BinaryPrimitives.ReadUInt32BigEndian(_scratch) != Info.AllocationContext)
                {
                    throw new NbdProtocolException($"block status for meta context {BinaryPrimitives.ReadUInt32BigEndian(_scratch)}, which was not asked for");
                }

                var extentLength = BinaryPrimitives.ReadUInt32BigEndian(_scratch.AsSpan(4));
                if (extentLength == 0)
                {
                    throw new NbdProtocolException("a block-status extent of length 0");
                }

                request.Extent ??= (extentLength, (NbdAllocationState)BinaryPrimitives.ReadUInt32BigEndian(_scratch.AsSpan(8)));
                await SkipAsync(length - 12).ConfigureAwait(false);
                break;
            }

            case NbdChunkType.Error:
            case NbdChunkType.ErrorOffset:
                await ReceiveErrorAsync(request, chunk).ConfigureAwait(false);
                break;

            default:
                if (((ushort)chunk.Type & 0x8000) == 0)
                {
                    throw new NbdProtocolException($"unknown reply chunk type {(ushort)chunk.Type}");
                }

                // An error type this client does not know: still an error for the request (proto.md).
                if (length > MaxMetadataPayload)
                {
                    throw new NbdProtocolException($"an error chunk of {length} bytes");
                }

                await SkipAsync(length).ConfigureAwait(false);
                request.SetError(NbdError.EINVAL, $"unknown error chunk type {(ushort)chunk.Type}");
                break;
        }

        if ((chunk.Flags & NbdChunkFlags.Done) != 0)
        {
            if (request.Error == NbdError.None && request.Command == NbdCommand.Read && request.Covered != request.Length)
            {
                request.SetError(NbdError.EIO, $"the server's reply covered {request.Covered} of the {request.Length} bytes read");
            }
            else if (request.Error == NbdError.None && request.Command == NbdCommand.BlockStatus && request.Extent is null)
            {
                request.SetError(NbdError.EIO, "the server's block-status reply had no extent");
            }

            request.Complete();
        }
    }

    async Task ReceiveErrorAsync(NbdClientRequest request, NbdReplyHeader chunk)
    {
        var length = chunk.Length;
        var fixedPart = chunk.Type == NbdChunkType.ErrorOffset ? 14 : 6;
        if (length < fixedPart || length > MaxMetadataPayload)
        {
            throw new NbdProtocolException($"an error chunk of {length} bytes");
        }

        await ReadExactlyAsync(_scratch.AsMemory(0, 6)).ConfigureAwait(false);
        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(_scratch);
        var messageLength = BinaryPrimitives.ReadUInt16BigEndian(_scratch.AsSpan(4));
        if (messageLength > length - fixedPart)
        {
            throw new NbdProtocolException($"an error message of {messageLength} bytes in a chunk of {length}");
        }

        var message = new byte[messageLength];
        await ReadExactlyAsync(message).ConfigureAwait(false);
        await SkipAsync(length - 6 - (uint)messageLength).ConfigureAwait(false);
        request.SetError(error, messageLength > 0 ? Encoding.UTF8.GetString(message) : null);
    }

    /// <summary>A chunk's range as a slice of its request's buffer; outside the request is a protocol error.</summary>
    static (int Start, int Count) Within(NbdClientRequest request, ulong offset, long count)
    {
        var start = (long)offset - request.Offset;
        if (offset > long.MaxValue || start < 0 || count <= 0 || start + count > request.Length)
        {
            throw new NbdProtocolException($"a reply chunk at offset {offset} length {count}, outside the read at {request.Offset} length {request.Length}");
        }

        return ((int)start, (int)count);
    }

    async ValueTask ReadExactlyAsync(Memory<byte> buffer) => await _stream.ReadExactlyAsync(buffer).ConfigureAwait(false);

    async ValueTask SkipAsync(long length)
    {
        while (length > 0)
        {
            var piece = (int)Math.Min(length, _scratch.Length);
            await ReadExactlyAsync(_scratch.AsMemory(0, piece)).ConfigureAwait(false);
            length -= piece;
        }
    }

    /// <summary>
    /// How long closing waits for the requests on the wire to be answered before it drops the connection
    /// (they then fail as on a lost connection); the default of <see cref="NbdClientOptions.CloseGrace"/>.
    /// </summary>
    public static readonly TimeSpan CloseGrace = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Tells the server the client is leaving (NBD_CMD_DISC, which has no reply) once every request has its
    /// answer, then closes the connection; a server silent for <paramref name="grace"/> (on <paramref name="time"/>,
    /// the system's clock by default) is dropped without it.
    /// </summary>
    public async ValueTask DisposeAsync(TimeSpan grace, TimeProvider? time = null)
    {
        // No grace left: the server has been silent for all of it already, and nothing more is waited for.
        if (_failure is null && grace > TimeSpan.Zero)
        {
            using var timeout = new CancellationTokenSource(grace, time ?? TimeProvider.System);
            try
            {
                // Every slot back means nothing is on the wire; a broken connection releases them all too. The
                // slots and the gate stay taken: nothing starts on a closing connection.
                for (var i = 0; i < MaxInFlight; i++)
                {
                    await _slots.WaitAsync(timeout.Token).ConfigureAwait(false);
                }

                await _sendGate.WaitAsync(timeout.Token).ConfigureAwait(false);
                if (_failure is null)
                {
                    var header = new byte[NbdWire.RequestSize];
                    NbdWire.WriteRequest(header, new NbdRequest(NbdCommandFlags.None, NbdCommand.Disconnect, 0, 0, 0));
                    await _stream.WriteAsync(header, timeout.Token).ConfigureAwait(false);
                    await _stream.FlushAsync(timeout.Token).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException)
            {
                // The server went first, or stayed silent past the grace: leaving is done either way.
            }
        }

        Fail(new NbdConnectionLostException("The NBD connection was closed"));
        await _receiving.ConfigureAwait(false);
    }

    public ValueTask DisposeAsync() => DisposeAsync(CloseGrace);
}

/// <summary>What a request's reply said: the server's error (None on success), its message, and a block status's first extent.</summary>
public readonly record struct NbdReplyResult(NbdError Error, string? Message, (uint Length, NbdAllocationState Flags)? Extent);
