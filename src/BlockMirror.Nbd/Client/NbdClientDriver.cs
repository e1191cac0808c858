using System.Buffers;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// <c>nbd</c>: a protocol driver whose storage is an export of an NBD server, local or on another host (the
/// target of a cross-host mirror). Requests become NBD commands, many in flight at once, on one connection or,
/// with <c>multi-conn</c> where the server allows it, spread over several; block status comes from the
/// server's <c>base:allocation</c>, so a mirror onto it stays sparse and zero detection works over the wire.
/// </summary>
/// <remarks>
/// Several connections are used only when the server advertises NBD_FLAG_CAN_MULTI_CONN: then its caches are
/// shared by all connections, and a flush (or FUA) on one covers every write completed on any (the NBD spec's
/// promise). So a request may take any connection, and a flush goes out on one of them, not on each. Every
/// connection is its own <see cref="NbdClientSession"/>: one lost is reconnected on its own while the others
/// carry on.
/// </remarks>
public sealed class NbdClientDriver : IBlockDriver
{
    readonly string _nodeName;
    readonly NbdClientOptions _options;
    readonly NbdClientSession[] _sessions;
    readonly NbdExportInfo _info;
    readonly ILogger _logger;
    readonly bool _writable;
    int _turn;

    NbdClientDriver(string nodeName, NbdClientOptions options, NbdClientSession[] sessions, bool writable, ILogger logger)
    {
        _nodeName = nodeName;
        _writable = writable;
        _logger = logger;
        _options = options;
        _sessions = sessions;
        _info = sessions[0].Export;
        var maxTransfer = (int)Math.Min(_info.MaximumBlock, NbdClientHandshake.MaxBuffer);
        var alignment = (int)_info.MinimumBlock;
        // As QEMU 7.2's client: a write-zeroes keeps to the server's maximum block size like a write (a server
        // may refuse a longer one), a trim only to a u32 length under INT_MAX (the spec exempts it).
        var maxZeroes = BlockLimits.PieceSize(maxTransfer, alignment);
        var maxDiscard = BlockLimits.PieceSize(int.MaxValue, alignment);
        Limits = new BlockLimits(alignment, 0, (int)BlockLimits.PieceSize(1 << (31 - int.LeadingZeroCount(maxTransfer)), alignment), maxZeroes, maxDiscard);
        Capabilities = new DriverCapabilities
        {
            CanZeroEfficiently = _info.Has(NbdTransmissionFlags.SendWriteZeroes),
            CanUnmapOnZero = _info.Has(NbdTransmissionFlags.SendWriteZeroes),
            CanDiscard = _info.Has(NbdTransmissionFlags.SendTrim),
            CanFua = _info.Has(NbdTransmissionFlags.SendFua),
        };
    }

    /// <summary>Connects (trying again until <see cref="NbdClientOptions.OpenTimeout"/> when the server is not there yet) and opens the node.</summary>
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, NbdClientOptions options, bool readOnly, CancellationToken cancellationToken) =>
        graph.CreateNodeAsync(nodeName, readOnly, async (node, token) =>
        {
            var connection = await ConnectAsync(options, token).ConfigureAwait(false);
            if (connection.Info.ReadOnly && !readOnly)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
                // QEMU 7.2's words: its "NBD export is read-only" is lost on the way and bdrv_open_driver words the
                // bare EACCES. Ours stays in the hint.
                throw new BlockOpenException("Could not open image: Permission denied", BlockErrno.EACCES)
                {
                    Hint = "NBD export is read-only: open it with read-only=on",
                };
            }

            // Connections after a loss are single attempts: the session paces them.
            var again = options with { OpenTimeout = TimeSpan.Zero };
            Func<CancellationToken, Task<NbdClientConnection>> connect = token => ConnectAsync(again, token);
            var first = new NbdClientSession(connection, options, !readOnly, connect);
            var count = connection.Info.Has(NbdTransmissionFlags.CanMultiConn) ? options.MultiConn : 1;
            var sessions = count == 1 ? [first] : await OpenMoreAsync(first, count, options, !readOnly, connect, token).ConfigureAwait(false);
            return new NbdClientDriver(node.Name, options, sessions, !readOnly, node.Graph.Logger);
        }, cancellationToken);

    /// <summary>
    /// The connections after the first, opened together; each must reach the same export, still with
    /// NBD_FLAG_CAN_MULTI_CONN. If one cannot be opened, none is kept and the node does not open.
    /// </summary>
    static async Task<NbdClientSession[]> OpenMoreAsync(NbdClientSession first, int count, NbdClientOptions options, bool writable,
        Func<CancellationToken, Task<NbdClientConnection>> connect, CancellationToken cancellationToken)
    {
        var opening = new Task<NbdClientConnection>[count - 1];
        for (var i = 0; i < opening.Length; i++)
        {
            opening[i] = connect(cancellationToken);
        }

        try
        {
            await Task.WhenAll(opening).ConfigureAwait(false);
        }
        catch
        {
            // Faulted or not, each must be waited for (and closed if it opened).
        }

        var sessions = new NbdClientSession[count];
        sessions[0] = first;
        Exception? failure = null;
        for (var i = 0; i < opening.Length; i++)
        {
            if (opening[i].IsCompletedSuccessfully)
            {
                var connection = opening[i].Result;
                if (first.Mismatch(connection.Info) is { } mismatch)
                {
                    failure ??= new BlockOpenException($"NBD connection {i + 2} of {count} (multi-conn) reached a different export: {mismatch}");
                }

                sessions[i + 1] = new NbdClientSession(connection, options, writable, connect);
            }
            else
            {
                var why = opening[i].Exception?.InnerException ?? new OperationCanceledException(cancellationToken);
                failure ??= why is BlockOpenException open
                    ? new BlockOpenException($"NBD connection {i + 2} of {count} (multi-conn): {open.Message}", open.Errno, open) { Hint = open.Hint }
                    : why;
            }
        }

        if (failure is null)
        {
            return sessions;
        }

        foreach (var session in sessions)
        {
            if (session is not null)
            {
                await session.DisposeAsync().ConfigureAwait(false);
            }
        }

        throw failure;
    }

    /// <summary>One connection and handshake; with an open timeout, tries again while the server cannot be reached.</summary>
    internal static async Task<NbdClientConnection> ConnectAsync(NbdClientOptions options, CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + options.OpenTimeout;
        while (true)
        {
            using var attempt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            attempt.CancelAfter(options.AttemptTimeout);
            Stream stream;
            try
            {
                stream = await options.Server.ConnectAsync(attempt.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is BlockOpenException or OperationCanceledException && !cancellationToken.IsCancellationRequested && DateTime.UtcNow < deadline)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(1000, (deadline - DateTime.UtcNow).TotalMilliseconds)), cancellationToken).ConfigureAwait(false);
                continue;
            }
            catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
            {
                throw new BlockOpenException($"Failed to connect to '{options.Server}': no answer within {options.AttemptTimeout.TotalSeconds:0.#} s", BlockErrno.EIO, ex);
            }

            try
            {
                return await NbdClientConnection.OpenAsync(stream, options.Export, options.UpgradeToTls, attempt.Token).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                await stream.DisposeAsync().ConfigureAwait(false);
                switch (ex)
                {
                    case OperationCanceledException when !cancellationToken.IsCancellationRequested:
                        throw new BlockOpenException($"The NBD server at '{options.Server}' did not complete the handshake within {options.AttemptTimeout.TotalSeconds:0.#} s", BlockErrno.EIO, ex);
                    case IOException and not BlockOpenException:
                        // The handshake names what it was reading or sending; this is anything else on the way (TLS).
                        throw new BlockOpenException($"NBD handshake failed: {ex.Message}", BlockErrno.EIO, ex);
                    default:
                        throw;
                }
            }
        }
    }

    public string DriverName => DriverNames.Nbd;

    public DriverKind Kind => DriverKind.Protocol;

    public DriverCapabilities Capabilities { get; }

    public BlockLimits Limits { get; }

    public long Length => (long)_info.Size;

    public string? FileName => _options.FileName;

    /// <summary>What the handshake agreed, for tests and query commands.</summary>
    public NbdExportInfo Export => _info;

    /// <summary>The first connection's link to the server across connections (reconnect state), for tests and query commands.</summary>
    public NbdClientSession Session => _sessions[0];

    /// <summary>Every connection's session: one, or <c>multi-conn</c>'s count when the server allows it.</summary>
    public IReadOnlyList<NbdClientSession> Sessions => _sessions;

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        Check(await SendAsync(NbdCommand.Read, NbdCommandFlags.None, offset, buffer.Length, buffer, default, cancellationToken).ConfigureAwait(false),
            BlockOperation.Read, offset, buffer.Length);

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken) =>
        Check(await SendAsync(NbdCommand.Write, Fua(flags), offset, buffer.Length, default, buffer, cancellationToken).ConfigureAwait(false),
            BlockOperation.Write, offset, buffer.Length);

    public async ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        if (!_info.Has(NbdTransmissionFlags.SendWriteZeroes))
        {
            if ((flags & RequestFlags.NoFallback) != 0)
            {
                throw Error(BlockErrno.ENOTSUP, BlockOperation.WriteZeroes, offset, length, "the NBD server does not take write-zeroes");
            }

            await WriteZeroBuffersAsync(offset, length, flags, cancellationToken).ConfigureAwait(false);
            return;
        }

        var wire = Fua(flags) | ((flags & RequestFlags.MayUnmap) == 0 ? NbdCommandFlags.NoHole : NbdCommandFlags.None);
        if ((flags & RequestFlags.NoFallback) != 0)
        {
            if (!_info.Has(NbdTransmissionFlags.SendFastZero))
            {
                throw Error(BlockErrno.ENOTSUP, BlockOperation.WriteZeroes, offset, length, "the NBD server cannot promise fast zeroes");
            }

            wire |= NbdCommandFlags.FastZero;
        }

        Check(await SendAsync(NbdCommand.WriteZeroes, wire, offset, length, default, default, cancellationToken).ConfigureAwait(false),
            BlockOperation.WriteZeroes, offset, length);
    }

    /// <summary>A server without write-zeroes gets zero buffers, one maximum transfer at a time.</summary>
    async ValueTask WriteZeroBuffersAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        var size = (int)Math.Min(length, Limits.MaxTransfer);
        var zeroes = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            Array.Clear(zeroes, 0, size);
            for (var done = 0L; done < length;)
            {
                var piece = (int)Math.Min(size, length - done);
                await WriteAsync(offset + done, zeroes.AsMemory(0, piece), flags & RequestFlags.Fua, cancellationToken).ConfigureAwait(false);
                done += piece;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeroes);
        }
    }

    public async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (_info.Has(NbdTransmissionFlags.SendTrim))
        {
            Check(await SendAsync(NbdCommand.Trim, NbdCommandFlags.None, offset, length, default, default, cancellationToken).ConfigureAwait(false),
                BlockOperation.Discard, offset, length);
        }
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (_info.Has(NbdTransmissionFlags.SendFlush))
        {
            Check(await SendAsync(NbdCommand.Flush, NbdCommandFlags.None, 0, 0, default, default, cancellationToken).ConfigureAwait(false),
                BlockOperation.Flush, 0, 0);
        }
    }

    /// <summary>
    /// The server's <c>base:allocation</c> for one extent: a hole that reads as zeroes is Zero, anything else is
    /// Data (a hole that may not read as zeroes must still be copied). Without the context everything is Data,
    /// as QEMU answers.
    /// </summary>
    public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        length = Math.Min(length, Length - offset);
        if (_info.AllocationContext is null)
        {
            return new BlockStatus(BlockStatusFlags.Data | BlockStatusFlags.OffsetValid, length, offset);
        }

        var asked = Math.Min(length, BlockLimits.PieceSize(uint.MaxValue, Limits.RequestAlignment));
        var reply = await SendAsync(NbdCommand.BlockStatus, NbdCommandFlags.RequestOne, offset, asked, default, default, cancellationToken).ConfigureAwait(false);
        Check(reply, BlockOperation.BlockStatus, offset, asked);
        var (extentLength, state) = reply.Extent!.Value;
        var covered = Math.Min(extentLength, asked);
        if (covered < asked && covered % Limits.RequestAlignment != 0)
        {
            // An extent that ends inside a block breaks the protocol, but servers send them (a hole past the end
            // of a file whose length is not a multiple of 512). Cut it back to whole blocks; if it is shorter than
            // one, that block is data: claiming zeroes for the rest of it could lose what is there (QEMU 7.2 does
            // the same).
            if (covered > Limits.RequestAlignment)
            {
                covered = covered / Limits.RequestAlignment * Limits.RequestAlignment;
            }
            else
            {
                covered = Math.Min(asked, Limits.RequestAlignment);
                state = NbdAllocationState.None;
            }
        }

        var flags = (state & NbdAllocationState.Zero) != 0 ? BlockStatusFlags.Zero : BlockStatusFlags.None;
        if ((state & NbdAllocationState.Hole) == 0 || flags == BlockStatusFlags.None)
        {
            flags |= BlockStatusFlags.Data;
        }

        return new BlockStatus(flags | BlockStatusFlags.OffsetValid, covered, offset);
    }

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        ValueTask.FromException(Error(BlockErrno.ENOTSUP, BlockOperation.Truncate, length, 0, "Cannot resize NBD nodes"));

    /// <summary>
    /// One request on the current connection of the next session in turn. When the connection is lost under it,
    /// the request waits for a new one (within reconnect-delay) and goes out again there; otherwise it fails with
    /// EIO. Taking turns spreads the requests evenly, and a session that is reconnecting holds only the requests
    /// that came to it.
    /// </summary>
    /// <remarks>
    /// Sending a request again is safe for every command this driver sends, even when the lost server had
    /// carried it out: a read and a block status change nothing; a write, write-zeroes or trim leaves the range
    /// in the same state however often it is applied, and its caller has not been answered, so no later request
    /// of the caller's can have overtaken it; a flush makes durable whatever the new server holds. (What a
    /// server acknowledged and then lost in a crash is not brought back by any of this: QEMU's limit too.)
    /// </remarks>
    async ValueTask<NbdReplyResult> SendAsync(NbdCommand command, NbdCommandFlags flags, long offset, long length,
        Memory<byte> readBuffer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var session = _sessions.Length == 1 ? _sessions[0] : _sessions[(uint)Interlocked.Increment(ref _turn) % (uint)_sessions.Length];
        while (true)
        {
            var connection = session.Current;
            try
            {
                return await connection.RequestAsync(command, flags, offset, length, readBuffer, payload, cancellationToken).ConfigureAwait(false);
            }
            catch (NbdConnectionLostException)
            {
                try
                {
                    await session.WaitForReplacementAsync(connection, cancellationToken).ConfigureAwait(false);
                }
                catch (NbdConnectionLostException down)
                {
                    throw Error(BlockErrno.EIO, Operation(command), offset, length, down.Message, down);
                }
            }
        }
    }

    NbdCommandFlags Fua(RequestFlags flags) =>
        (flags & RequestFlags.Fua) != 0 && _info.Has(NbdTransmissionFlags.SendFua) ? NbdCommandFlags.Fua : NbdCommandFlags.None;

    void Check(NbdReplyResult reply, BlockOperation operation, long offset, long length)
    {
        if (reply.Error != NbdError.None)
        {
            var errno = NbdClientRequest.ToErrno(reply.Error);
            throw Error(errno, operation, offset, length, reply.Message ?? errno.Describe());
        }
    }

    BlockIOException Error(BlockErrno errno, BlockOperation operation, long offset, long length, string detail, Exception? inner = null) =>
        BlockIOException.Create(errno, _nodeName, operation, offset, length, detail, inner);

    static BlockOperation Operation(NbdCommand command) => command switch
    {
        NbdCommand.Read => BlockOperation.Read,
        NbdCommand.Write => BlockOperation.Write,
        NbdCommand.WriteZeroes => BlockOperation.WriteZeroes,
        NbdCommand.Trim => BlockOperation.Discard,
        NbdCommand.Flush => BlockOperation.Flush,
        _ => BlockOperation.BlockStatus,
    };

    /// <summary>
    /// Flushes a writable node (QEMU's bdrv_close flushes every node, and an NBD node's flush goes to the server
    /// whether or not anything was written), then closes every connection at once. The flush and the close share
    /// one <see cref="NbdClientOptions.CloseGrace"/>: a server that leaves the flush unanswered would leave the
    /// close waiting for that same reply.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        var closing = _options.Time.GetTimestamp();
        await FlushBeforeCloseAsync().ConfigureAwait(false);
        var left = _options.CloseGrace - _options.Time.GetElapsedTime(closing);
        var grace = left > TimeSpan.Zero ? left : TimeSpan.Zero;
        await Task.WhenAll(_sessions.Select(session => session.DisposeAsync(grace).AsTask())).ConfigureAwait(false);
    }

    /// <summary>
    /// The close's flush, on a connection that is up, within <see cref="NbdClientOptions.CloseGrace"/>. Unlike
    /// QEMU, which waits out <c>reconnect-delay</c> for a server that is down, the close does not wait for a
    /// connection: the node is going, and a daemon's quit must not hang on a dead host. A flush that cannot be
    /// made is logged, and the close goes on (QEMU's close goes on too).
    /// </summary>
    async ValueTask FlushBeforeCloseAsync()
    {
        if (!_writable || !_info.Has(NbdTransmissionFlags.SendFlush))
        {
            return;
        }

        // With multi-conn one flush covers every connection's completed writes; without, there is one connection.
        if (Array.Find(_sessions, s => s.State == NbdClientState.Connected) is not { } session)
        {
            NbdClientLog.CloseFlushFailed(_logger, _nodeName, "no connection to the server is up");
            return;
        }

        var flush = session.Current.RequestAsync(NbdCommand.Flush, NbdCommandFlags.None, 0, 0, default, default, CancellationToken.None).AsTask();
        try
        {
            var reply = await flush.WaitAsync(_options.CloseGrace, _options.Time).ConfigureAwait(false);
            if (reply.Error != NbdError.None)
            {
                NbdClientLog.CloseFlushFailed(_logger, _nodeName, reply.Message ?? NbdClientRequest.ToErrno(reply.Error).Describe());
            }
        }
        catch (TimeoutException)
        {
            // The connection's close fails the request; nobody waits for that.
            _ = flush.ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
            NbdClientLog.CloseFlushFailed(_logger, _nodeName, $"the server did not answer within {_options.CloseGrace.TotalSeconds:0.#} s");
        }
        catch (NbdConnectionLostException lost)
        {
            NbdClientLog.CloseFlushFailed(_logger, _nodeName, lost.Message);
        }
    }
}
