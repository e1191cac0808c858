using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// A client node's link to its export across connections: the current connection, and when it is lost, a
/// background loop that connects again (QEMU 7.2's reconnect in block/nbd.c and nbd/client-connection.c).
/// </summary>
/// <remarks>
/// <para>States (<see cref="NbdClientState"/>): Connected → on a lost connection ConnectingWait (with
/// <c>reconnect-delay</c>) or ConnectingNoWait (without) → Connected again once the loop has a new connection.
/// ConnectingWait turns into ConnectingNoWait when the delay, counted from the first request that met the lost
/// connection, runs out. A server that broke the protocol, or closing the node, is Quit, for good.</para>
/// <para>The loop starts as soon as the connection is lost, delay or not (QEMU connects again in the background
/// with reconnect-delay 0 too), and keeps trying until it succeeds or the node closes: at once, then after
/// 1 s, 2 s, 4 s, 8 s and every 16 s (QEMU's connect thread).</para>
/// <para>A new connection must be to the same export: the same size, still writable for a writable node, the
/// commands and block status the node was opened with, block sizes that fit the node's limits. One that is not
/// is closed and counts as a failed attempt; requests fail with the reason. QEMU 7.2 takes any export here.</para>
/// <para>The hot path takes no lock and allocates nothing: a request reads <see cref="Current"/> and goes out on
/// it. Only a request that met a lost connection comes to <see cref="WaitForReplacementAsync"/>.</para>
/// </remarks>
public sealed class NbdClientSession : IAsyncDisposable
{
    /// <summary>The pause after the first failed attempt; doubled after each one up to <see cref="MaxBackoff"/>.</summary>
    public static readonly TimeSpan FirstBackoff = TimeSpan.FromSeconds(1);

    /// <summary>The longest pause between attempts.</summary>
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(16);

    /// <summary>The flags that say which commands the node sends; a new connection must offer all the first one did.</summary>
    const NbdTransmissionFlags CommandFlags = NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim
        | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero;

    readonly NbdClientOptions _options;
    readonly bool _writable;
    readonly Func<CancellationToken, Task<NbdClientConnection>> _connect;
    readonly TimeProvider _time;
    readonly CancellationTokenSource _quit = new();
    readonly Lock _lock = new();
    readonly Task _watching;
    NbdClientConnection _connection;
    NbdClientState _state;
    Exception? _reason;
    TaskCompletionSource? _outage;
    ITimer? _delayTimer;
    int _reconnects;
    bool _disposed;

    /// <param name="connection">The connection the node was opened on; it defines the export.</param>
    /// <param name="options">The node's options (<c>reconnect-delay</c>).</param>
    /// <param name="writable">The node writes: a new connection to a read-only export will not do.</param>
    /// <param name="connect">One connection and handshake (no retries: the session paces them).</param>
    /// <param name="time">Clock for the delay and the pauses between attempts.</param>
    public NbdClientSession(NbdClientConnection connection, NbdClientOptions options, bool writable,
        Func<CancellationToken, Task<NbdClientConnection>> connect, TimeProvider? time = null)
    {
        _connection = connection;
        Export = connection.Info;
        _options = options;
        _writable = writable;
        _connect = connect;
        _time = time ?? TimeProvider.System;
        _watching = Task.Run(WatchAsync);
    }

    /// <summary>The export as the node was opened on it; every later connection agrees with it.</summary>
    public NbdExportInfo Export { get; }

    /// <summary>The connection requests go out on: the live one, or the lost one until a new one is up.</summary>
    public NbdClientConnection Current => Volatile.Read(ref _connection);

    public NbdClientState State
    {
        get
        {
            lock (_lock)
            {
                return _state;
            }
        }
    }

    /// <summary>New connections made after a loss, for diagnostics and tests.</summary>
    public int Reconnects => Volatile.Read(ref _reconnects);

    /// <summary>
    /// For a request that failed because <paramref name="lost"/> was lost: returns when the request should go
    /// out again on <see cref="Current"/> (a new connection is up), or throws <see cref="NbdConnectionLostException"/>
    /// when it should fail (no delay, the delay ran out, the node is closing, the server broke the protocol).
    /// Waits at most until the delay runs out; <paramref name="cancellationToken"/> (a forced job cancel) ends the wait.
    /// </summary>
    public async ValueTask WaitForReplacementAsync(NbdClientConnection lost, CancellationToken cancellationToken)
    {
        Task wait;
        lock (_lock)
        {
            if (_connection != lost)
            {
                return;
            }

            // The request may see the loss before the watcher does.
            LostLocked(lost);
            if (_state != NbdClientState.ConnectingWait)
            {
                throw DownLocked();
            }

            // QEMU's reconnect_delay_timer: started by the first request that waits, stopped by the new connection.
            _delayTimer ??= _time.CreateTimer(static state => ((NbdClientSession)state!).DelayOver(), this, _options.ReconnectDelay, Timeout.InfiniteTimeSpan);
            wait = _outage!.Task;
        }

        await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        lock (_lock)
        {
            if (_connection == lost)
            {
                throw DownLocked();
            }
        }
    }

    /// <summary>Why requests fail now, in the words of the loss or of the last attempt.</summary>
    NbdConnectionLostException DownLocked()
    {
        var reason = _reason?.Message ?? "the connection was lost";
        return new NbdConnectionLostException(_state switch
        {
            NbdClientState.Quit => $"NBD connection closed: {reason}",
            _ when _options.ReconnectDelay > TimeSpan.Zero => $"NBD server not reconnected within reconnect-delay ({_options.ReconnectDelay.TotalSeconds:0} s): {reason}",
            _ => $"NBD connection lost: {reason}",
        }, _reason);
    }

    /// <summary>The state a lost connection leads to; only the first report of a loss counts.</summary>
    void LostLocked(NbdClientConnection lost)
    {
        if (_state != NbdClientState.Connected || _connection != lost)
        {
            return;
        }

        _reason = lost.Failure;
        _outage = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // Only an I/O failure is worth another connection; a server that sent what the protocol does not allow
        // is not trusted again (QEMU: EIO reconnects, anything else quits).
        if (_quit.IsCancellationRequested || lost.Failure?.InnerException is NbdProtocolException)
        {
            _state = NbdClientState.Quit;
            _outage.SetResult();
            return;
        }

        _state = _options.ReconnectDelay > TimeSpan.Zero ? NbdClientState.ConnectingWait : NbdClientState.ConnectingNoWait;
    }

    void DelayOver()
    {
        TaskCompletionSource? outage = null;
        lock (_lock)
        {
            if (_state == NbdClientState.ConnectingWait)
            {
                _state = NbdClientState.ConnectingNoWait;
                outage = _outage;
            }
        }

        outage?.TrySetResult();
    }

    /// <summary>The background loop: waits for the connection to end, then connects again, for the node's life.</summary>
    async Task WatchAsync()
    {
        var connection = Current;
        while (true)
        {
            try
            {
                // The receive loop ends only when the connection does.
                await connection.Completion.WaitAsync(_quit.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            lock (_lock)
            {
                LostLocked(connection);
                if (_state == NbdClientState.Quit)
                {
                    return;
                }
            }

            var next = await ReconnectAsync().ConfigureAwait(false);
            if (next is null)
            {
                return;
            }

            TaskCompletionSource? outage;
            lock (_lock)
            {
                if (_state == NbdClientState.Quit)
                {
                    outage = null;
                }
                else
                {
                    _connection = next;
                    _state = NbdClientState.Connected;
                    _reason = null;
                    _delayTimer?.Dispose();
                    _delayTimer = null;
                    outage = _outage;
                    _outage = null;
                    _reconnects++;
                }
            }

            if (outage is null)
            {
                await next.DisposeAsync().ConfigureAwait(false);
                return;
            }

            outage.TrySetResult();
            await connection.DisposeAsync().ConfigureAwait(false);
            connection = next;
        }
    }

    /// <summary>Tries until a connection to the same export is up; null once the node is closing.</summary>
    async Task<NbdClientConnection?> ReconnectAsync()
    {
        var pause = FirstBackoff;
        while (true)
        {
            Exception failure;
            try
            {
                var connection = await _connect(_quit.Token).ConfigureAwait(false);
                var mismatch = Mismatch(connection.Info);
                if (mismatch is null)
                {
                    return connection;
                }

                // Told politely (NBD_CMD_DISC), as QEMU does when a new connection will not do.
                await connection.DisposeAsync().ConfigureAwait(false);
                failure = new IOException($"the server's export changed: {mismatch}");
            }
            catch (OperationCanceledException) when (_quit.IsCancellationRequested)
            {
                return null;
            }
            catch (Exception ex)
            {
                // Refused, reset, a failed handshake: all are worth another try; the last one is what requests report.
                failure = ex;
            }

            lock (_lock)
            {
                if (_state == NbdClientState.Quit)
                {
                    return null;
                }

                _reason = failure;
            }

            try
            {
                await Task.Delay(pause, _time, _quit.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return null;
            }

            pause = pause * 2 > MaxBackoff ? MaxBackoff : pause * 2;
        }
    }

    /// <summary>
    /// What makes a new connection's export not the one the node was opened on, or null. With several
    /// connections (<c>multi-conn</c>) the server must still share its caches among them.
    /// </summary>
    internal string? Mismatch(NbdExportInfo now)
    {
        var was = Export;
        var kept = _options.MultiConn > 1 ? CommandFlags | NbdTransmissionFlags.CanMultiConn : CommandFlags;
        var missing = was.Flags & kept & ~now.Flags;
        return now switch
        {
            _ when now.Size != was.Size => $"it is {now.Size} bytes, it was {was.Size}",
            _ when _writable && now.ReadOnly => "NBD export is read-only",
            _ when missing != 0 => $"the server no longer offers {missing}",
            _ when was.AllocationContext is not null && now.AllocationContext is null => "the server no longer offers base:allocation",
            _ when was.MinimumBlock % now.MinimumBlock != 0 || now.MaximumBlock < was.MaximumBlock =>
                $"block sizes {now.MinimumBlock}..{now.MaximumBlock}, where the node was opened with {was.MinimumBlock}..{was.MaximumBlock}",
            _ => null,
        };
    }

    /// <summary>
    /// Closes the node's link: the loop stops (an attempt under way is cancelled), waiting requests fail, and
    /// the connection, if up, is closed after its requests, waiting for them at most <paramref name="grace"/>.
    /// </summary>
    public async ValueTask DisposeAsync(TimeSpan grace)
    {
        TaskCompletionSource? outage;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            _state = NbdClientState.Quit;
            _reason ??= new NbdConnectionLostException("the node was closed");
            outage = _outage;
            _delayTimer?.Dispose();
            _delayTimer = null;
        }

        _quit.Cancel();
        outage?.TrySetResult();
        await _watching.ConfigureAwait(false);
        await Current.DisposeAsync(grace, _options.Time).ConfigureAwait(false);
        _quit.Dispose();
    }

    public ValueTask DisposeAsync() => DisposeAsync(_options.CloseGrace);
}
