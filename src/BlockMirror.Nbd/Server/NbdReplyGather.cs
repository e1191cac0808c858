using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BlockMirror.Block.Io;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// What one send of replies carries: header bytes (and small data) copied into one pinned batch buffer, large
/// data as segments of its own, all in order. On a plain socket (Linux) <see cref="FlushAsync"/> hands every
/// segment to the kernel in one <c>sendmsg</c> with an iovec each, so a read's header and its data, and several
/// replies queued together, leave in one system call without being copied together. On TLS, or where the
/// socket is full, each segment goes through the stream's own write, which waits for room. Read data waiting in
/// a pipe (<see cref="SpliceAsync"/>) follows a flush, spliced from the pipe into the socket.
/// </summary>
/// <remarks>Used by one sender at a time (the transmission's reply sender); nothing here is thread-safe.</remarks>
sealed partial class NbdReplyGather : IDisposable
{
    /// <summary>Segments one send carries at most (well under the kernel's IOV_MAX of 1024).</summary>
    public const int MaxSegments = 64;

    const int MsgDontWait = 0x40;
    const int MsgNoSignal = 0x4000;
    const int EIntr = 4;
    const int EPipe = 32;
    const int EAgain = 11;
    const int EConnReset = 104;

    readonly Stream _stream;

    /// <summary>The socket's descriptor when sends may go around the stream (a plain socket on Linux), else -1.</summary>
    readonly int _socket;

    readonly byte[] _batch;
    readonly ReadOnlyMemory<byte>[] _segments = new ReadOnlyMemory<byte>[MaxSegments];
    readonly MemoryHandle[] _pins = new MemoryHandle[MaxSegments];
    readonly unsafe IoVector* _vectors;
    int _count;
    int _used;

    /// <summary>Whether the last segment is the batch's tail, so that bytes appended next extend it.</summary>
    bool _batchOpen;

    /// <param name="socket">The stream's socket when the stream is the socket's own (no TLS over it); null otherwise.</param>
    public unsafe NbdReplyGather(Stream stream, Socket? socket, int batchSize)
    {
        _stream = stream;
        _socket = socket is not null && OperatingSystem.IsLinux() ? (int)socket.Handle : -1;
        // Pinned for good: its segments need no pin per send.
        _batch = GC.AllocateUninitializedArray<byte>(batchSize, pinned: true);
        _vectors = (IoVector*)NativeMemory.Alloc(MaxSegments, (nuint)sizeof(IoVector));
    }

    public bool IsEmpty => _count == 0;

    /// <summary>Whether read data may go from a pipe straight into the socket (a plain, non-blocking socket on Linux).</summary>
    public bool CanSplice => _socket >= 0 && SplicePipe.Supported && (_socketNonBlocking ??= IsNonBlocking(_socket));

    bool? _socketNonBlocking;

    /// <summary>
    /// Sends <paramref name="length"/> bytes out of <paramref name="pipe"/>, after what was flushed before (call on an
    /// empty gather). The pipe's pages go into the socket as they are; where the socket is full, a piece is read
    /// out into the batch buffer and goes through the stream's write, which waits for room.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask SpliceAsync(SplicePipe pipe, int length)
    {
        Debug.Assert(IsEmpty, "the pipe's data follows what the gather held");
        for (var left = length; left > 0;)
        {
            var moved = SpliceOut(pipe.ReadEnd, left);
            if (moved > 0)
            {
                pipe.Taken((int)moved);
                left -= (int)moved;
                continue;
            }

            var piece = pipe.ReadInto(_batch.AsSpan(0, Math.Min(left, _batch.Length)));
            await _stream.WriteAsync(_batch.AsMemory(0, piece)).ConfigureAwait(false);
            left -= piece;
        }
    }

    /// <summary>One non-blocking splice from the pipe into the socket: the bytes moved, or 0 when the socket has no room.</summary>
    unsafe long SpliceOut(int pipe, int length)
    {
        long moved;
        do
        {
            moved = SpliceToSocket(pipe, null, _socket, null, (nuint)length, SpliceMove | SpliceNonBlock);
        }
        while (moved < 0 && Marshal.GetLastPInvokeError() == EIntr);

        if (moved >= 0)
        {
            return moved;
        }

        var error = Marshal.GetLastPInvokeError();
        return error == EAgain ? 0 : throw SendFailure(error);
    }

    static bool IsNonBlocking(int socket) => (GetFlags(socket, FGetFl, 0) & ONonBlock) != 0;

    /// <summary>Whether <paramref name="copied"/> more bytes in the batch and <paramref name="segments"/> more segments of their own fit in this send.</summary>
    public bool HasRoom(int copied, int segments) =>
        _used + copied <= _batch.Length && _count + segments + (_batchOpen || copied == 0 ? 0 : 1) <= MaxSegments;

    /// <summary>Room for <paramref name="length"/> bytes at the end of the batch, sent in order after what is there (check <see cref="HasRoom"/> first).</summary>
    public Span<byte> Append(int length)
    {
        var span = _batch.AsSpan(_used, length);
        if (_batchOpen)
        {
            var last = _segments[_count - 1];
            _segments[_count - 1] = _batch.AsMemory(_used - last.Length, last.Length + length);
        }
        else
        {
            _segments[_count++] = _batch.AsMemory(_used, length);
            _batchOpen = true;
        }

        _used += length;
        return span;
    }

    /// <summary>Sends <paramref name="data"/> from where it is, after what is there; it must stay untouched until the flush.</summary>
    public void Add(ReadOnlyMemory<byte> data)
    {
        _segments[_count++] = data;
        _batchOpen = false;
    }

    /// <summary>Sends every segment, in order; then the gather is empty again.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask FlushAsync()
    {
        try
        {
            var next = 0;
            var sent = 0;
            while (next < _count)
            {
                var written = _socket < 0 ? -1 : SendGathered(next, sent);
                if (written < 0)
                {
                    // TLS or a full socket: the stream's write waits for room.
                    await _stream.WriteAsync(_segments[next][sent..]).ConfigureAwait(false);
                    next++;
                    sent = 0;
                    continue;
                }

                // Past the segments sent whole, into the one sent in part.
                sent += (int)written;
                while (next < _count && sent >= _segments[next].Length)
                {
                    sent -= _segments[next].Length;
                    next++;
                }
            }
        }
        finally
        {
            Array.Clear(_segments, 0, _count);
            _count = 0;
            _used = 0;
            _batchOpen = false;
        }
    }

    /// <summary>
    /// One non-blocking sendmsg of segments [<paramref name="first"/>, count) less <paramref name="skip"/> bytes of the
    /// first; returns the bytes sent, or -1 when the socket has no room. A failure throws as the socket's send would.
    /// </summary>
    unsafe long SendGathered(int first, int skip)
    {
        var vectors = 0;
        for (var i = first; i < _count; i++, vectors++)
        {
            var segment = _segments[i];
            if (MemoryMarshal.TryGetArray(segment, out var array) && ReferenceEquals(array.Array, _batch))
            {
                // The batch is pinned: its address needs no handle.
                _vectors[vectors].Base = (byte*)Unsafe.AsPointer(ref _batch[array.Offset]);
            }
            else
            {
                _pins[vectors] = segment.Pin();
                _vectors[vectors].Base = (byte*)_pins[vectors].Pointer;
            }

            _vectors[vectors].Length = (nuint)segment.Length;
        }

        _vectors[0].Base += skip;
        _vectors[0].Length -= (nuint)skip;
        var message = new MessageHeader { Vectors = _vectors, VectorCount = (nuint)vectors };
        long written;
        do
        {
            written = SendMessage(_socket, &message, MsgDontWait | MsgNoSignal);
        }
        while (written < 0 && Marshal.GetLastPInvokeError() == EIntr);

        var error = written < 0 ? Marshal.GetLastPInvokeError() : 0;

        for (var i = 0; i < vectors; i++)
        {
            _pins[i].Dispose();
            _pins[i] = default;
        }

        if (written < 0 && error != EAgain)
        {
            throw SendFailure(error);
        }

        return written;
    }

    /// <summary>
    /// A failed send as the socket's own send reports it: the errno read here is gone for the next send, so a reset
    /// must be named now for the connection's log to say so.
    /// </summary>
    static IOException SendFailure(int error) =>
        new($"Unable to write data to the transport connection: {Marshal.GetPInvokeErrorMessage(error)}.",
            new SocketException((int)(error switch { EConnReset => SocketError.ConnectionReset, EPipe => SocketError.Shutdown, _ => SocketError.SocketError })));

    public unsafe void Dispose() => NativeMemory.Free(_vectors);

    const int FGetFl = 3;
    const int ONonBlock = 0x800;
    const uint SpliceMove = 1;
    const uint SpliceNonBlock = 2;

    [LibraryImport("libc", EntryPoint = "splice", SetLastError = true)]
    private static unsafe partial nint SpliceToSocket(int fdIn, long* offsetIn, int fdOut, long* offsetOut, nuint length, uint flags);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int GetFlags(int fd, int command, int argument);

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static unsafe partial nint SendMessage(int socket, MessageHeader* message, int flags);

    /// <summary>struct iovec.</summary>
    [StructLayout(LayoutKind.Sequential)]
    unsafe struct IoVector
    {
        public byte* Base;
        public nuint Length;
    }

    /// <summary>struct msghdr (64-bit layout): no address, no control data.</summary>
    [StructLayout(LayoutKind.Sequential)]
    unsafe struct MessageHeader
    {
        public void* Name;
        public uint NameLength;
        public IoVector* Vectors;
        public nuint VectorCount;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }
}
