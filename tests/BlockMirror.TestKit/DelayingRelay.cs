using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace BlockMirror.TestKit;

/// <summary>
/// A TCP relay that adds a round-trip time to a link (this kernel has no netem): it accepts on one end,
/// connects to the target for each connection, and forwards both directions, each holding every byte for
/// half the round trip. Each direction is a queue of timestamped chunks between a reader and a writer, so
/// the delay adds latency without limiting throughput (the reader keeps reading while the writer waits for
/// the oldest chunk to come due), as a long wire would.
/// </summary>
/// <remarks>
/// When one side closes, the other is shut down for sending once every byte before the close is delivered;
/// when one side fails (reset, refused connect), both are reset, as a broken link looks to both ends. A
/// connection accepted while the target refuses is reset at once. With a network namespace, the relay's
/// sockets are made inside it (by a thread of its own that enters it), so it can stand on host A of
/// <see cref="NetworkNamespaces"/> and reach host B over the veth link.
/// </remarks>
public sealed class DelayingRelay : IDisposable
{
    const int ChunkBytes = 64 * 1024;

    // At most this many chunks (64 MiB) wait in one direction: far more than 1 Gbit/s holds for a few
    // milliseconds, so the queue bounds memory without ever being what limits the rate.
    const int MaxQueuedChunks = 1024;

    readonly Socket _listener;
    readonly EndPoint _target;
    readonly long _delayTicks;
    readonly List<Socket> _open = [];
    int _connections;

    DelayingRelay(Socket listener, EndPoint target, TimeSpan roundTrip)
    {
        _listener = listener;
        _target = target;
        _delayTicks = (long)(roundTrip.TotalSeconds / 2 * Stopwatch.Frequency);
        EndPoint = (IPEndPoint)listener.LocalEndPoint!;
    }

    /// <summary>Where the relay listens.</summary>
    public IPEndPoint EndPoint { get; }

    /// <summary>How many connections it has accepted so far.</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>
    /// Starts a relay listening on <paramref name="listenOn"/> (port 0: any free one) that forwards to
    /// <paramref name="target"/> with <paramref name="roundTrip"/> added; inside namespace
    /// <paramref name="ns"/> when given.
    /// </summary>
    public static async Task<DelayingRelay> StartAsync(IPEndPoint listenOn, EndPoint target, TimeSpan roundTrip, string? ns = null)
    {
        // The listener must be made inside the namespace, and so must every outgoing socket: all socket
        // creation happens on the acceptor thread, which enters the namespace first and is never reused.
        var ready = new TaskCompletionSource<DelayingRelay>(TaskCreationOptions.RunContinuationsAsynchronously);
        var starter = new Thread(() =>
        {
            try
            {
                if (ns is not null)
                {
                    NetworkNamespaces.EnterOnThisThread(ns);
                }

                var listener = new Socket(listenOn.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                listener.Bind(listenOn);
                listener.Listen(16);
                var relay = new DelayingRelay(listener, target, roundTrip);
                ready.SetResult(relay);
                relay.AcceptLoop();
            }
            catch (Exception e) when (!ready.Task.IsCompleted)
            {
                ready.SetException(e);
            }
        })
        { IsBackground = true, Name = "relay" };
        starter.Start();
        return await ready.Task;
    }

    void AcceptLoop()
    {
        while (true)
        {
            Socket inbound;
            Socket outbound;
            try
            {
                inbound = _listener.Accept();
                outbound = new Socket(_target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return; // disposed
            }

            Interlocked.Increment(ref _connections);
            lock (_open)
            {
                _open.Add(inbound);
                _open.Add(outbound);
            }

            _ = RelayAsync(inbound, outbound);
        }
    }

    async Task RelayAsync(Socket inbound, Socket outbound)
    {
        using var broken = new CancellationTokenSource();
        try
        {
            inbound.NoDelay = true;
            using (var connectTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
            {
                await outbound.ConnectAsync(_target, connectTimeout.Token);
            }

            if (outbound.AddressFamily != AddressFamily.Unix)
            {
                outbound.NoDelay = true;
            }

            await Task.WhenAll(ForwardAsync(inbound, outbound, broken), ForwardAsync(outbound, inbound, broken));
        }
        catch (Exception)
        {
            // The target refused or a side failed: reset both, as a broken link looks from each end.
            Reset(inbound);
            Reset(outbound);
        }
        finally
        {
            inbound.Dispose();
            outbound.Dispose();
            lock (_open)
            {
                _open.Remove(inbound);
                _open.Remove(outbound);
            }
        }
    }

    /// <summary>One direction: a reader queues what arrives, stamped with when it may leave; a writer sends each chunk when it comes due.</summary>
    async Task ForwardAsync(Socket from, Socket to, CancellationTokenSource broken)
    {
        var queue = Channel.CreateBounded<(byte[] Buffer, int Length, long Due)>(new BoundedChannelOptions(MaxQueuedChunks) { SingleReader = true, SingleWriter = true });
        var writer = WriteDueAsync(queue.Reader, to, broken.Token);
        try
        {
            while (true)
            {
                var buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
                int read;
                try
                {
                    read = await from.ReceiveAsync(buffer, SocketFlags.None, broken.Token);
                }
                catch
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    throw;
                }

                if (read == 0)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    break;
                }

                await queue.Writer.WriteAsync((buffer, read, Stopwatch.GetTimestamp() + _delayTicks), broken.Token);
            }

            queue.Writer.Complete();
            await writer;
            to.Shutdown(SocketShutdown.Send);
        }
        catch
        {
            queue.Writer.TryComplete();
            await broken.CancelAsync();
            try
            {
                await writer;
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
            {
            }

            throw;
        }
    }

    static async Task WriteDueAsync(ChannelReader<(byte[] Buffer, int Length, long Due)> queue, Socket to, CancellationToken cancellationToken)
    {
        try
        {
            await foreach (var (buffer, length, due) in queue.ReadAllAsync(cancellationToken))
            {
                try
                {
                    // Timers count whole milliseconds and may fire a little early: wait again until truly due.
                    for (long wait; (wait = due - Stopwatch.GetTimestamp()) > 0;)
                    {
                        await Task.Delay(TimeSpan.FromMilliseconds(Math.Ceiling(wait * 1000.0 / Stopwatch.Frequency)), cancellationToken);
                    }

                    for (var sent = 0; sent < length;)
                    {
                        sent += await to.SendAsync(buffer.AsMemory(sent, length - sent), SocketFlags.None, cancellationToken);
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
        }
        finally
        {
            // Chunks left when the link broke.
            while (queue.TryRead(out var left))
            {
                ArrayPool<byte>.Shared.Return(left.Buffer);
            }
        }
    }

    static void Reset(Socket socket)
    {
        try
        {
            // Linger 0: the close sends RST instead of FIN.
            socket.LingerState = new LingerOption(true, 0);
            socket.Close();
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Breaks every open connection (both ends reset), as a link that drops; new ones are still accepted.</summary>
    public void BreakConnections()
    {
        Socket[] open;
        lock (_open)
        {
            open = [.. _open];
        }

        foreach (var socket in open)
        {
            Reset(socket);
        }
    }

    /// <summary>Stops accepting and breaks every open connection.</summary>
    public void Dispose()
    {
        _listener.Dispose();
        BreakConnections();
    }
}
