using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// The transmission phase of one connection. One loop reads requests (and write payloads) in order; each
/// request then runs on its own, at most <see cref="MaxInFlight"/> at once, and replies as soon as it is
/// done, out of order. Requests reach the export's node through its root edge, so writes are seen by a
/// running mirror and follow a pivot.
/// </summary>
/// <remarks>
/// <para>Write payloads: a small one (up to 16 KiB) is read through the pipe with the headers around it and
/// copied out. Of a large one, what the pipe already holds is copied out of it, the rest is read from the socket
/// straight into the pooled request buffer. The pipe reads in small pieces so that a header read brings
/// along little of a large payload.</para>
/// <para>Replies: a finished request queues its reply (header, and read data or a structured payload) and
/// goes on; the first to find no sender running becomes the sender and writes out everything queued, small
/// replies coalesced into one send, until the queue is empty. No request waits for another's send, and
/// the request slot and the reply's buffers are given back only once the reply is on the socket.</para>
/// </remarks>
sealed partial class NbdTransmission(NbdConnection connection, NbdExport export, bool structured, NbdMetaContexts? contexts) : IAsyncDisposable
{
    /// <summary>Largest read or write payload (QEMU's NBD_MAX_BUFFER_SIZE): a bigger read is refused, a bigger write closes the connection.</summary>
    public const int MaxPayload = 32 << 20;

    /// <summary>Requests of one connection in progress at once (QEMU's MAX_NBD_REQUESTS).</summary>
    public const int MaxInFlight = 16;

    /// <summary>Write payloads up to this size are read through the pipe and copied out; larger ones are read from the socket into their buffer.</summary>
    const int PipedPayloadLimit = 16 << 10;

    /// <summary>Reply data up to this size is copied next to its header and sent with it; larger data is sent from its own buffer.</summary>
    const int CoalesceLimit = 4096;

    /// <summary>Room for every reply in flight with coalesced data, so one send can carry them all.</summary>
    const int BatchSize = MaxInFlight * (CoalesceLimit + ReplyHeader.Length);

    readonly SemaphoreSlim _slots = new(MaxInFlight, MaxInFlight);
    readonly PipeReader _reader = connection.Reader;
    readonly Stream _stream = connection.Stream;
    readonly AlignedBufferPool _buffers = connection.Buffers;
    readonly NodeEdge _edge = export.Edge;
    readonly ILogger _logger = connection.Logger;

    // Replies: _replies and _sending are guarded by _replyLock; the gather, the array of replies being sent
    // and _broken belong to the one sender running.
    readonly Lock _replyLock = new();
    readonly Queue<Reply> _replies = new(MaxInFlight);
    readonly Reply[] _sendingReplies = new Reply[MaxInFlight];
    readonly NbdReplyGather _gather = new(connection.Stream, connection.Socket, BatchSize);
    bool _sending;
    bool _broken;

    // Why a send failed, for the log (written by the sender, read after every slot is back).
    Exception? _sendFailure;

    // Replies of the batch being sent whose buffers and slots are back already.
    int _released;

    /// <summary>
    /// Serves requests until the client sends NBD_CMD_DISC (returns null) or closes the connection (returns
    /// how, for the log); a protocol error throws.
    /// </summary>
    public async Task<string?> RunAsync(CancellationToken cancellationToken)
    {
        var end = await ReadRequestsAsync(cancellationToken).ConfigureAwait(false);
        // A reset that a send met first leaves the reader only an end of stream; every sender is done by now.
        return end is not null && NbdConnection.IsReset(_sendFailure) ? NbdConnection.ResetReason : end;
    }

    /// <summary>The request loop of <see cref="RunAsync"/>; returns once every request in progress has replied.</summary>
    async Task<string?> ReadRequestsAsync(CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                var result = await _reader.ReadAtLeastAsync(NbdWire.RequestSize, cancellationToken).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (!NbdWire.TryReadRequest(ref buffer, out var magic, out var request))
                {
                    // The client closed the connection (between requests, or in the middle of one).
                    _reader.AdvanceTo(buffer.Start, buffer.End);
                    return buffer.IsEmpty ? "EOF without NBD_CMD_DISC" : "EOF in the middle of a request header";
                }

                _reader.AdvanceTo(buffer.Start);
                if (magic != NbdMagic.Request)
                {
                    throw new NbdProtocolException($"request magic 0x{magic:x8} instead of 0x{NbdMagic.Request:x8}");
                }

                if (request.Command == NbdCommand.Disconnect)
                {
                    return null;
                }

                AlignedMemory? payload = null;
                if (request.Command == NbdCommand.Write)
                {
                    if (request.Length > MaxPayload)
                    {
                        // Skipping that much unread payload is not worth trusting the client with: say why in an
                        // error reply, then close (QEMU does the same). The finally below waits for the reply.
                        await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
                        QueueError(request, NbdError.EINVAL, $"write payload of {request.Length} bytes is over the limit of {MaxPayload}");
                        throw new NbdProtocolException($"write payload of {request.Length} bytes is over the limit of {MaxPayload}");
                    }

                    payload = await ReadPayloadAsync((int)request.Length, cancellationToken).ConfigureAwait(false);
                }

                try
                {
                    await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    if (payload is not null)
                    {
                        _buffers.Return(payload);
                    }

                    throw;
                }

                // Runs on this thread until the request reaches its first wait (the file driver makes every
                // blocking system call on its I/O threads), then the loop reads on.
                _ = ServeAsync(request, payload);
            }
        }
        finally
        {
            // Let every request in progress finish and reply before the connection closes.
            for (var i = 0; i < MaxInFlight; i++)
            {
                await _slots.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<AlignedMemory> ReadPayloadAsync(int length, CancellationToken cancellationToken)
    {
        var payload = _buffers.Rent(Math.Max(length, 1));
        try
        {
            if (length <= PipedPayloadLimit)
            {
                // Small: through the pipe, whose reads bring the next requests along; a copy of a few KiB costs
                // less than the read system call (and the wait for the socket) a read of the payload alone takes.
                var piped = await _reader.ReadAtLeastAsync(length, cancellationToken).ConfigureAwait(false);
                if (piped.Buffer.Length < length)
                {
                    _reader.AdvanceTo(piped.Buffer.Start, piped.Buffer.End);
                    throw new EndOfStreamException("the client closed the connection in the middle of a write payload");
                }

                piped.Buffer.Slice(0, length).CopyTo(payload.Memory.Span);
                _reader.AdvanceTo(piped.Buffer.GetPosition(length));
                return payload;
            }

            // Large: the part of the payload that came in with the header is in the pipe...
            var copied = 0;
            if (_reader.TryRead(out var result))
            {
                copied = (int)Math.Min(result.Buffer.Length, length);
                result.Buffer.Slice(0, copied).CopyTo(payload.Memory.Span);
                _reader.AdvanceTo(result.Buffer.GetPosition(copied));
            }

            // ...the rest comes from the socket straight into the payload buffer, one copy fewer than through
            // the pipe. Reading around the pipe keeps the byte stream in order only because the pipe holds
            // nothing now (it was emptied above) and never reads ahead on its own.
            while (copied < length)
            {
                var read = await _stream.ReadAsync(payload.Memory[copied..length], cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    throw new EndOfStreamException("the client closed the connection in the middle of a write payload");
                }

                copied += read;
            }

            return payload;
        }
        catch
        {
            _buffers.Return(payload);
            throw;
        }
    }

    /// <summary>Runs one request and queues its one reply; the reply's sender gives the request slot back.</summary>
    async Task ServeAsync(NbdRequest request, AlignedMemory? payload)
    {
        var queued = false;
        var statistics = export.Statistics;
        statistics.Received(request.Command, request.Length);
        try
        {
            var (error, message) = Validate(request);
            if (error != NbdError.None)
            {
                statistics.Failed();
                NbdServerLog.RequestRefused(_logger, connection.Client, export.Name, request.Command, request.Offset, request.Length, error, message!);
                QueueError(request, error, message);
                queued = true;
                return;
            }

            try
            {
                // Queues the reply as its last step.
                await ExecuteAsync(request, payload).ConfigureAwait(false);
                queued = true;
            }
            catch (BlockIOException ex)
            {
                statistics.Failed();
                var failure = ToNbdError(ex.Errno);
                NbdServerLog.RequestFailed(_logger, connection.Client, export.Name, request.Command, request.Offset, request.Length, failure, ex.Message);
                QueueError(request, failure, ex.Message);
                queued = true;
            }
        }
        catch (Exception ex)
        {
            // Whatever went wrong, the client gets an answer rather than a request that never completes: a
            // node that went away, a cancelled request, a bug. If the connection is gone too, the sender
            // finds it broken and drops the reply.
            statistics.Failed();
            var failure = ex is OperationCanceledException ? NbdError.ESHUTDOWN : NbdError.EIO;
            NbdServerLog.RequestFailed(_logger, connection.Client, export.Name, request.Command, request.Offset, request.Length, failure, ex.Message);
            QueueError(request, failure, ex.Message);
            queued = true;
        }
        finally
        {
            if (payload is not null)
            {
                _buffers.Return(payload);
            }

            if (!queued)
            {
                _slots.Release();
            }
        }
    }

    /// <summary>Checks a request against the export before anything runs: a refused request changes nothing.</summary>
    (NbdError Error, string? Message) Validate(in NbdRequest request)
    {
        var allowed = request.Command switch
        {
            NbdCommand.Read => NbdCommandFlags.Fua | NbdCommandFlags.DontFragment,
            NbdCommand.Write => NbdCommandFlags.Fua,
            NbdCommand.Flush => NbdCommandFlags.None,
            NbdCommand.Trim => NbdCommandFlags.Fua,
            NbdCommand.Cache => NbdCommandFlags.None,
            NbdCommand.WriteZeroes => NbdCommandFlags.Fua | NbdCommandFlags.NoHole | NbdCommandFlags.FastZero,
            NbdCommand.BlockStatus => NbdCommandFlags.RequestOne,
            _ => (NbdCommandFlags?)null,
        };
        if (allowed is null)
        {
            return (NbdError.EINVAL, $"unknown command {(ushort)request.Command}");
        }

        if ((request.Flags & ~allowed.Value) != 0)
        {
            return (NbdError.EINVAL, $"flags 0x{(ushort)request.Flags:x} are not valid for command {request.Command}");
        }

        if (!export.Writable && request.Command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes)
        {
            return (NbdError.EPERM, $"export '{export.Name}' is read-only");
        }

        if (request.Command == NbdCommand.Read && request.Length > MaxPayload)
        {
            return (NbdError.EINVAL, $"read of {request.Length} bytes is over the limit of {MaxPayload}");
        }

        var size = (ulong)_edge.Node.Length;
        if (request.Command != NbdCommand.Flush && (request.Offset > size || request.Length > size - request.Offset))
        {
            // The errno the NBD spec asks for and QEMU and nbdkit send: no space for data, invalid otherwise.
            var error = request.Command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.ENOSPC : NbdError.EINVAL;
            return (error, $"request [{request.Offset}, +{request.Length}) runs past the end of the export ({size} bytes)");
        }

        if (request.Command == NbdCommand.BlockStatus && (contexts is null || request.Length == 0))
        {
            // QEMU's words and order.
            return (NbdError.EINVAL, request.Length == 0 ? "need non-zero length" : "CMD_BLOCK_STATUS not negotiated");
        }

        return (NbdError.None, null);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask ExecuteAsync(NbdRequest request, AlignedMemory? payload)
    {
        var offset = (long)request.Offset;
        var length = (int)Math.Min(request.Length, int.MaxValue);
        // A writethrough export makes every write durable before it is acknowledged (QEMU turns the
        // export's write cache off, which adds FUA to every write and write-zeroes).
        var fua = (request.Flags & NbdCommandFlags.Fua) != 0 || export.Writethrough && request.Command is NbdCommand.Write or NbdCommand.WriteZeroes
            ? RequestFlags.Fua : RequestFlags.None;
        switch (request.Command)
        {
            case NbdCommand.Read:
                if (structured && length > 0 && (request.Flags & NbdCommandFlags.DontFragment) == 0)
                {
                    await SparseReadAsync(request, offset, length).ConfigureAwait(false);
                }
                else
                {
                    await ReadAsync(request, offset, length).ConfigureAwait(false);
                }

                return;
            case NbdCommand.Write:
                if (length > 0)
                {
                    await _edge.WriteAsync(offset, payload!.Memory[..length], fua).ConfigureAwait(false);
                }

                break;
            case NbdCommand.Flush:
                await _edge.FlushAsync().ConfigureAwait(false);
                break;
            case NbdCommand.Trim:
                if (length > 0)
                {
                    await _edge.DiscardAsync(offset, request.Length).ConfigureAwait(false);
                    if (fua != RequestFlags.None)
                    {
                        await _edge.FlushAsync().ConfigureAwait(false);
                    }
                }

                break;
            case NbdCommand.WriteZeroes:
                if (length > 0)
                {
                    var flags = fua;
                    flags |= (request.Flags & NbdCommandFlags.NoHole) == 0 ? RequestFlags.MayUnmap : RequestFlags.None;
                    flags |= (request.Flags & NbdCommandFlags.FastZero) != 0 ? RequestFlags.NoFallback : RequestFlags.None;
                    await _edge.WriteZeroesAsync(offset, request.Length, flags).ConfigureAwait(false);
                }

                break;
            case NbdCommand.Cache:
                // Advisory: there is no cache of our own to warm, and the page cache warms itself.
                break;
            case NbdCommand.BlockStatus:
                await BlockStatusAsync(request).ConfigureAwait(false);
                return;
        }

        var reply = default(Reply);
        reply.HeaderLength = NbdWire.WriteSimpleReply(reply.Header, NbdError.None, request.Cookie);
        Queue(ref reply);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask ReadAsync(NbdRequest request, long offset, int length)
    {
        Reply reply;
        if (RentPipe(offset, length, SplicePipe.PagesFor(offset, length)) is { } pipe)
        {
            await ReadIntoPipeAsync(pipe, offset, length).ConfigureAwait(false);
            Interlocked.Increment(ref SplicedReads);
            reply = new Reply { Pipe = pipe, BodyLength = length };
        }
        else
        {
            var buffer = _buffers.Rent(Math.Max(length, 1));
            try
            {
                if (length > 0)
                {
                    await _edge.ReadAsync(offset, buffer.Memory[..length]).ConfigureAwait(false);
                }
            }
            catch
            {
                _buffers.Return(buffer);
                throw;
            }

            // The data goes to the socket from this buffer (or next to its header, when small); the sender
            // returns the buffer to the pool.
            reply = new Reply { Data = buffer, BodyLength = length };
        }

        if (structured)
        {
            Span<byte> header = reply.Header;
            var size = NbdWire.WriteChunkHeader(header, NbdChunkFlags.Done, NbdChunkType.OffsetData, request.Cookie, (uint)(8 + length));
            BinaryPrimitives.WriteUInt64BigEndian(header[size..], request.Offset);
            reply.HeaderLength = size + 8;
        }
        else
        {
            reply.HeaderLength = NbdWire.WriteSimpleReply(reply.Header, NbdError.None, request.Cookie);
        }

        Queue(ref reply);
    }

    void QueueError(NbdRequest request, NbdError error, string? message)
    {
        var reply = default(Reply);
        if (structured)
        {
            // An error chunk carries a message for the client's log: u32 error, u16 length, text.
            var text = Encoding.UTF8.GetBytes(message ?? "");
            var length = Math.Min(text.Length, 4096);
            var body = ArrayPool<byte>.Shared.Rent(6 + length);
            BinaryPrimitives.WriteUInt32BigEndian(body, (uint)error);
            BinaryPrimitives.WriteUInt16BigEndian(body.AsSpan(4), (ushort)length);
            text.AsSpan(0, length).CopyTo(body.AsSpan(6));
            reply.Body = body;
            reply.BodyLength = 6 + length;
            reply.HeaderLength = NbdWire.WriteChunkHeader(reply.Header, NbdChunkFlags.Done, NbdChunkType.Error, request.Cookie, (uint)reply.BodyLength);
        }
        else
        {
            reply.HeaderLength = NbdWire.WriteSimpleReply(reply.Header, error, request.Cookie);
        }

        Queue(ref reply);
    }

    /// <summary>Queues a request's reply; when no sender is running, this thread becomes the sender.</summary>
    void Queue(ref Reply reply)
    {
        lock (_replyLock)
        {
            _replies.Enqueue(reply);
            if (_sending)
            {
                // The running sender looks at the queue again before it stops.
                return;
            }

            _sending = true;
        }

        _ = SendRepliesAsync();
    }

    /// <summary>
    /// Writes out the queued replies until the queue is empty, then stops. Runs on the thread of the request
    /// that found no sender, and goes on wherever its sends complete.
    /// </summary>
    async Task SendRepliesAsync()
    {
        while (true)
        {
            int count;
            lock (_replyLock)
            {
                count = _replies.Count;
                if (count == 0)
                {
                    _sending = false;
                    return;
                }

                for (var i = 0; i < count; i++)
                {
                    _sendingReplies[i] = _replies.Dequeue();
                }
            }

            _released = 0;
            try
            {
                if (!_broken)
                {
                    await WriteRepliesAsync(count).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
            {
                // The client is gone: the reader loop ends the connection; the replies still queued are dropped.
                _broken = true;
                _sendFailure ??= ex;
            }

            ReleaseUpTo(count);
        }
    }

    /// <summary>
    /// Sends <c>_sendingReplies[0..count)</c> in order: headers and small data gathered into the batch buffer,
    /// large data from its own, all of it in one gather send where it fits. A send that the gather cannot hold
    /// goes out first; the replies it carried whole are released then, not at the end of the batch: their
    /// slots let the request loop start the next requests while the rest are still being sent.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask WriteRepliesAsync(int count)
    {
        for (var i = 0; i < count; i++)
        {
            if (_sendingReplies[i].Chunks is not null)
            {
                await GatherSparseReadAsync(i).ConfigureAwait(false);
                continue;
            }

            var headerLength = _sendingReplies[i].HeaderLength;
            var bodyLength = _sendingReplies[i].BodyLength;
            if (_sendingReplies[i].Pipe is { } pipe)
            {
                await SendHeaderAndPipeAsync(i, pipe, bodyLength).ConfigureAwait(false);
                continue;
            }

            var coalesce = bodyLength <= CoalesceLimit;
            if (!_gather.HasRoom(headerLength + (coalesce ? bodyLength : 0), coalesce ? 0 : 1))
            {
                await FlushAsync(i).ConfigureAwait(false);
            }

            ((ReadOnlySpan<byte>)_sendingReplies[i].Header)[..headerLength].CopyTo(_gather.Append(headerLength));
            if (bodyLength == 0)
            {
                continue;
            }

            var body = _sendingReplies[i].Data is { } data ? data.Memory[..bodyLength] : _sendingReplies[i].Body.AsMemory(0, bodyLength);
            if (coalesce)
            {
                body.Span.CopyTo(_gather.Append(bodyLength));
            }
            else
            {
                _gather.Add(body);
            }
        }

        await FlushAsync(count).ConfigureAwait(false);
    }

    /// <summary>
    /// Sends what the gather holds with the header of <c>_sendingReplies[index]</c> (or the chunk header just
    /// appended) at its end, then <paramref name="length"/> bytes of the reply's data out of its pipe.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask SendHeaderAndPipeAsync(int index, SplicePipe pipe, int length, bool headerAppended = false)
    {
        if (!headerAppended)
        {
            var headerLength = _sendingReplies[index].HeaderLength;
            if (!_gather.HasRoom(headerLength, 0))
            {
                await FlushAsync(index).ConfigureAwait(false);
            }

            ((ReadOnlySpan<byte>)_sendingReplies[index].Header)[..headerLength].CopyTo(_gather.Append(headerLength));
        }

        await FlushAsync(index).ConfigureAwait(false);
        await _gather.SpliceAsync(pipe, length).ConfigureAwait(false);
    }

    /// <summary>Sends what the gather holds, then releases the replies before <paramref name="whole"/>, which it carried to the end.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask FlushAsync(int whole)
    {
        if (!_gather.IsEmpty)
        {
            await _gather.FlushAsync().ConfigureAwait(false);
        }

        ReleaseUpTo(whole);
    }

    /// <summary>Gives back the buffers and request slots of <c>_sendingReplies[_released..end)</c>.</summary>
    void ReleaseUpTo(int end)
    {
        for (; _released < end; _released++)
        {
            ref var reply = ref _sendingReplies[_released];
            if (reply.Data is not null)
            {
                _buffers.Return(reply.Data);
            }

            if (reply.Body is not null)
            {
                ArrayPool<byte>.Shared.Return(reply.Body);
            }

            if (reply.Chunks is not null)
            {
                ArrayPool<ReadChunk>.Shared.Return(reply.Chunks);
            }

            if (reply.Pipe is not null)
            {
                reply.Pipe.Release();
            }

            reply = default;

            // Only once its reply is out (or the client is gone): the connection closes when every slot
            // is back, and so after every reply has been sent.
            _slots.Release();
        }
    }

    /// <summary>One reply waiting to be sent: its header, then <see cref="BodyLength"/> bytes from <see cref="Data"/> or <see cref="Body"/>.</summary>
    struct Reply
    {
        public ReplyHeader Header;
        public int HeaderLength;

        /// <summary>Read data, from the request buffer pool; returned to it once sent.</summary>
        public AlignedMemory? Data;

        /// <summary>Read data waiting in a pipe, instead of <see cref="Data"/>; released to the pool once sent.</summary>
        public SplicePipe? Pipe;

        /// <summary>A structured reply's payload, rented from the shared array pool; returned once sent.</summary>
        public byte[]? Body;

        public int BodyLength;

        /// <summary>
        /// A sparse read's chunks, in order, rented from the shared array pool (the first <see cref="ChunkCount"/>
        /// count): their headers are written when sent, their data is in <see cref="Data"/> at the same place
        /// as in the request. <see cref="Header"/> is unused then.
        /// </summary>
        public ReadChunk[]? Chunks;

        public int ChunkCount;

        /// <summary>A sparse read's cookie and offset, for its chunk headers.</summary>
        public ulong Cookie;

        public ulong Offset;
    }

    /// <summary>One chunk of a sparse read: <see cref="Length"/> bytes from <see cref="Start"/> bytes into the request, data or a hole.</summary>
    readonly record struct ReadChunk(int Start, int Length, bool Hole);

    /// <summary>Room for the longest reply header: a structured chunk header and the offset of an OffsetData chunk.</summary>
    [InlineArray(Length)]
    struct ReplyHeader
    {
        public const int Length = NbdWire.ChunkHeaderSize + 8;

        byte _element;
    }

    /// <summary>NBD carries a fixed set of errno values; everything else becomes EIO.</summary>
    internal static NbdError ToNbdError(BlockErrno errno) => errno switch
    {
        BlockErrno.EPERM or BlockErrno.EROFS or BlockErrno.EACCES => NbdError.EPERM,
        BlockErrno.ENOMEM => NbdError.ENOMEM,
        BlockErrno.EINVAL => NbdError.EINVAL,
        BlockErrno.ENOSPC or BlockErrno.EFBIG => NbdError.ENOSPC,
        BlockErrno.ENOTSUP => NbdError.ENOTSUP,
        BlockErrno.ESHUTDOWN => NbdError.ESHUTDOWN,
        _ => NbdError.EIO,
    };

    public ValueTask DisposeAsync()
    {
        _slots.Dispose();
        _gather.Dispose();
        return ValueTask.CompletedTask;
    }
}
