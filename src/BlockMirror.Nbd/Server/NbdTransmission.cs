using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// The transmission phase of one connection. One loop reads requests (and write payloads) in order; each
/// request then runs on its own, at most <see cref="MaxInFlight"/> at once, and replies as soon as it is
/// done, out of order, one reply at a time on the socket. Requests reach the export's node through its
/// root edge, so writes are seen by a running mirror and follow a pivot.
/// </summary>
sealed class NbdTransmission(NbdConnection connection, NbdExport export, bool structured, bool allocationContext) : IAsyncDisposable
{
    /// <summary>Largest read or write payload (QEMU's NBD_MAX_BUFFER_SIZE): a bigger read is refused, a bigger write closes the connection.</summary>
    public const int MaxPayload = 32 << 20;

    /// <summary>Requests of one connection in progress at once (QEMU's MAX_NBD_REQUESTS).</summary>
    public const int MaxInFlight = 16;

    /// <summary>Most extents one block-status reply describes.</summary>
    const int MaxExtents = 2048;

    readonly SemaphoreSlim _slots = new(MaxInFlight, MaxInFlight);
    readonly SemaphoreSlim _writeLock = new(1, 1);
    readonly PipeReader _reader = connection.Reader;
    readonly PipeWriter _writer = connection.Writer;
    readonly AlignedBufferPool _buffers = connection.Buffers;
    readonly NodeEdge _edge = export.Edge;

    public async Task RunAsync(CancellationToken cancellationToken)
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
                    return;
                }

                _reader.AdvanceTo(buffer.Start);
                if (magic != NbdMagic.Request)
                {
                    throw new NbdProtocolException($"request magic 0x{magic:x8} instead of 0x{NbdMagic.Request:x8}");
                }

                if (request.Command == NbdCommand.Disconnect)
                {
                    return;
                }

                AlignedMemory? payload = null;
                if (request.Command == NbdCommand.Write)
                {
                    if (request.Length > MaxPayload)
                    {
                        // Skipping that much unread payload is not worth trusting the client with: close.
                        throw new NbdProtocolException($"write payload of {request.Length} bytes is over the limit of {MaxPayload}");
                    }

                    payload = await ReadPayloadAsync((int)request.Length, cancellationToken).ConfigureAwait(false);
                }

                await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
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

    async ValueTask<AlignedMemory> ReadPayloadAsync(int length, CancellationToken cancellationToken)
    {
        var payload = _buffers.Rent(Math.Max(length, 1));
        var copied = 0;
        try
        {
            while (copied < length)
            {
                var result = await _reader.ReadAsync(cancellationToken).ConfigureAwait(false);
                var take = (int)Math.Min(result.Buffer.Length, length - copied);
                result.Buffer.Slice(0, take).CopyTo(payload.Memory.Span[copied..]);
                copied += take;
                _reader.AdvanceTo(result.Buffer.GetPosition(take));
                if (take == 0 && result.IsCompleted)
                {
                    throw new EndOfStreamException("the client closed the connection in the middle of a write payload");
                }
            }

            return payload;
        }
        catch
        {
            _buffers.Return(payload);
            throw;
        }
    }

    async Task ServeAsync(NbdRequest request, AlignedMemory? payload)
    {
        try
        {
            var (error, message) = Validate(request);
            if (error != NbdError.None)
            {
                await ReplyErrorAsync(request, error, message).ConfigureAwait(false);
                return;
            }

            try
            {
                await ExecuteAsync(request, payload).ConfigureAwait(false);
            }
            catch (BlockIOException ex)
            {
                await ReplyErrorAsync(request, ToNbdError(ex.Errno), ex.Message).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
        {
            // The reply could not be sent: the connection is closing, and the reader loop ends it.
        }
        finally
        {
            if (payload is not null)
            {
                _buffers.Return(payload);
            }

            _slots.Release();
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
            return (NbdError.EINVAL, $"request [{request.Offset}, +{request.Length}) runs past the end of the export ({size} bytes)");
        }

        if (request.Command == NbdCommand.BlockStatus && (!allocationContext || request.Length == 0))
        {
            return (NbdError.EINVAL, allocationContext ? "block status of zero bytes" : "no meta context was negotiated");
        }

        return (NbdError.None, null);
    }

    async ValueTask ExecuteAsync(NbdRequest request, AlignedMemory? payload)
    {
        var offset = (long)request.Offset;
        var length = (int)Math.Min(request.Length, int.MaxValue);
        var fua = (request.Flags & NbdCommandFlags.Fua) != 0 ? RequestFlags.Fua : RequestFlags.None;
        switch (request.Command)
        {
            case NbdCommand.Read:
                await ReadAsync(request, offset, length).ConfigureAwait(false);
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

        await ReplyOkAsync(request).ConfigureAwait(false);
    }

    async ValueTask ReadAsync(NbdRequest request, long offset, int length)
    {
        var buffer = _buffers.Rent(Math.Max(length, 1));
        try
        {
            var data = buffer.Memory[..length];
            if (length > 0)
            {
                await _edge.ReadAsync(offset, data).ConfigureAwait(false);
            }

            await _writeLock.WaitAsync().ConfigureAwait(false);
            try
            {
                if (structured)
                {
                    NbdWire.WriteChunkHeader(_writer, NbdChunkFlags.Done, NbdChunkType.OffsetData, request.Cookie, (uint)(8 + length));
                    NbdWire.WriteUInt64(_writer, request.Offset);
                }
                else
                {
                    NbdWire.WriteSimpleReply(_writer, NbdError.None, request.Cookie);
                }

                // The header goes through the pipe; the data goes from our buffer to the socket directly
                // (one copy fewer for every byte read), after the flush has emptied the pipe.
                await _writer.FlushAsync().ConfigureAwait(false);
                await connection.Stream.WriteAsync(data).ConfigureAwait(false);
            }
            finally
            {
                _writeLock.Release();
            }
        }
        finally
        {
            _buffers.Return(buffer);
        }
    }

    /// <summary>
    /// <c>base:allocation</c> extents from the node's chain: HOLE where the chain holds no data (it reads
    /// zeroes or falls through), ZERO where it reads zeroes, as QEMU's NBD server maps block status.
    /// </summary>
    async ValueTask BlockStatusAsync(NbdRequest request)
    {
        var extents = new List<(uint Length, NbdAllocationState State)>();
        var offset = (long)request.Offset;
        var end = offset + request.Length;
        var one = (request.Flags & NbdCommandFlags.RequestOne) != 0;
        while (offset < end && extents.Count < MaxExtents)
        {
            var status = await BlockChain.GetBlockStatusAboveAsync(_edge.Node, null, offset, end - offset).ConfigureAwait(false);
            var state = (status.IsData ? NbdAllocationState.None : NbdAllocationState.Hole) |
                (status.IsZero ? NbdAllocationState.Zero : NbdAllocationState.None);
            var length = Math.Min(status.Length, uint.MaxValue & ~4095L);
            if (extents.Count > 0 && extents[^1].State == state && extents[^1].Length + length <= uint.MaxValue)
            {
                extents[^1] = ((uint)(extents[^1].Length + length), state);
            }
            else
            {
                extents.Add(((uint)length, state));
            }

            offset += length;
            if (one)
            {
                break;
            }
        }

        await _writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            NbdWire.WriteChunkHeader(_writer, NbdChunkFlags.Done, NbdChunkType.BlockStatus, request.Cookie, (uint)(4 + 8 * extents.Count));
            NbdWire.WriteUInt32(_writer, NbdConnection.AllocationContextId);
            foreach (var (length, state) in extents)
            {
                NbdWire.WriteUInt32(_writer, length);
                NbdWire.WriteUInt32(_writer, (uint)state);
            }

            await _writer.FlushAsync().ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    async ValueTask ReplyOkAsync(NbdRequest request)
    {
        await _writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            NbdWire.WriteSimpleReply(_writer, NbdError.None, request.Cookie);
            await _writer.FlushAsync().ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    async ValueTask ReplyErrorAsync(NbdRequest request, NbdError error, string? message)
    {
        await _writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (structured)
            {
                // An error chunk carries a message for the client's log: u32 error, u16 length, text.
                var text = Encoding.UTF8.GetBytes(message ?? "");
                var length = Math.Min(text.Length, 4096);
                NbdWire.WriteChunkHeader(_writer, NbdChunkFlags.Done, NbdChunkType.Error, request.Cookie, (uint)(6 + length));
                NbdWire.WriteUInt32(_writer, (uint)error);
                NbdWire.WriteUInt16(_writer, (ushort)length);
                _writer.Write(text.AsSpan(0, length));
            }
            else
            {
                NbdWire.WriteSimpleReply(_writer, error, request.Cookie);
            }

            await _writer.FlushAsync().ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
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
        _writeLock.Dispose();
        return ValueTask.CompletedTask;
    }
}
