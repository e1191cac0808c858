using System.Buffers;
using Org.BouncyCastle.Tls;

namespace BlockMirror.Net.Tls;

/// <summary>
/// A TLS session of BouncyCastle's (used for what SslStream lacks: pre-shared keys) as an async
/// <see cref="Stream"/>. BouncyCastle's protocol object runs in its non-blocking mode: received bytes are
/// offered to it, the records it produces are sent by us, so no thread ever blocks on the socket.
/// </summary>
/// <remarks>
/// One reader and one writer may run at once (as with SslStream). The protocol object is not thread-safe:
/// every call into it holds <see cref="_protocolLock"/>, never across an await; the records it queues go out
/// under <see cref="_sendLock"/>, in the order they were made.
/// </remarks>
sealed class NonBlockingTlsStream : Stream
{
    const int ChunkSize = 16 << 10;

    readonly TlsProtocol _protocol;
    readonly Stream _inner;
    readonly Lock _protocolLock = new();
    readonly SemaphoreSlim _sendLock = new(1, 1);
    readonly byte[] _receiveBuffer = new byte[ChunkSize];
    byte[] _sendBuffer = new byte[ChunkSize];
    int _disposed;

    NonBlockingTlsStream(TlsProtocol protocol, Stream inner)
    {
        _protocol = protocol;
        _inner = inner;
    }

    /// <summary>Runs the handshake <paramref name="protocol"/> began (Accept or Connect, non-blocking) to its end.</summary>
    public static async ValueTask<Stream> HandshakeAsync(TlsProtocol protocol, Stream inner, CancellationToken cancellationToken)
    {
        var stream = new NonBlockingTlsStream(protocol, inner);
        try
        {
            await stream.SendPendingAsync(cancellationToken).ConfigureAwait(false);
            while (stream.IsHandshaking())
            {
                if (!await stream.ReceiveAsync(cancellationToken).ConfigureAwait(false))
                {
                    throw new TlsException("TLS handshake failed: the peer closed the connection");
                }
            }

            return stream;
        }
        catch (Exception ex) when (ex is TlsFatalAlert or TlsFatalAlertReceived or TlsException or IOException or OperationCanceledException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            if (ex is OperationCanceledException or TlsException)
            {
                throw;
            }

            throw new TlsException($"TLS handshake failed: {ex.Message}", ex);
        }
    }

    bool IsHandshaking()
    {
        lock (_protocolLock)
        {
            return _protocol.IsHandshaking;
        }
    }

    /// <summary>Reads once from the socket and gives the bytes to the protocol; false at the end of the stream.</summary>
    async ValueTask<bool> ReceiveAsync(CancellationToken cancellationToken)
    {
        var read = await _inner.ReadAsync(_receiveBuffer, cancellationToken).ConfigureAwait(false);
        if (read == 0)
        {
            return false;
        }

        lock (_protocolLock)
        {
            _protocol.OfferInput(_receiveBuffer, 0, read);
        }

        // The input may call for an answer (handshake messages, a close_notify, a renegotiation refusal).
        await SendPendingAsync(cancellationToken).ConfigureAwait(false);
        return true;
    }

    /// <summary>Sends every record the protocol has queued, in order.</summary>
    async ValueTask SendPendingAsync(CancellationToken cancellationToken)
    {
        await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            while (true)
            {
                int count;
                lock (_protocolLock)
                {
                    count = _protocol.GetAvailableOutputBytes();
                    if (count == 0)
                    {
                        return;
                    }

                    if (count > _sendBuffer.Length)
                    {
                        _sendBuffer = new byte[Math.Max(count, _sendBuffer.Length * 2)];
                    }

                    count = _protocol.ReadOutput(_sendBuffer, 0, count);
                }

                await _inner.WriteAsync(_sendBuffer.AsMemory(0, count), cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            _sendLock.Release();
        }
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (buffer.IsEmpty)
        {
            return 0;
        }

        while (true)
        {
            lock (_protocolLock)
            {
                var available = _protocol.GetAvailableInputBytes();
                if (available > 0)
                {
                    var count = Math.Min(available, buffer.Length);
                    var rented = ArrayPool<byte>.Shared.Rent(count);
                    try
                    {
                        count = _protocol.ReadInput(rented, 0, count);
                        rented.AsSpan(0, count).CopyTo(buffer.Span);
                        return count;
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(rented);
                    }
                }

                if (_protocol.IsClosed)
                {
                    return 0;
                }
            }

            try
            {
                if (!await ReceiveAsync(cancellationToken).ConfigureAwait(false))
                {
                    return 0;
                }
            }
            catch (Exception ex) when (ex is TlsFatalAlert or TlsFatalAlertReceived)
            {
                throw new IOException($"TLS session failed: {ex.Message}", ex);
            }
        }
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var rented = ArrayPool<byte>.Shared.Rent(Math.Min(buffer.Length, ChunkSize));
        try
        {
            for (var done = 0; done < buffer.Length;)
            {
                var count = Math.Min(rented.Length, buffer.Length - done);
                buffer.Span.Slice(done, count).CopyTo(rented);
                try
                {
                    lock (_protocolLock)
                    {
                        _protocol.WriteApplicationData(rented, 0, count);
                    }
                }
                catch (Exception ex) when (ex is TlsFatalAlert or TlsFatalAlertReceived or InvalidOperationException)
                {
                    throw new IOException($"TLS session failed: {ex.Message}", ex);
                }

                done += count;
                await SendPendingAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task FlushAsync(CancellationToken cancellationToken) => _inner.FlushAsync(cancellationToken);

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            await base.DisposeAsync().ConfigureAwait(false);
            return;
        }

        try
        {
            lock (_protocolLock)
            {
                // Queues close_notify; sent below if the connection still takes it.
                _protocol.Close();
            }

            await SendPendingAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or TlsFatalAlert or InvalidOperationException)
        {
        }

        await _inner.DisposeAsync().ConfigureAwait(false);
        _sendLock.Dispose();
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _inner.Dispose();
            _sendLock.Dispose();
        }

        base.Dispose(disposing);
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    // Synchronous I/O would block a thread on the socket: everything here is async.
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("use ReadAsync");

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
