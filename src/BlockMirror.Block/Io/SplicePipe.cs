using System.Runtime.InteropServices;
using BlockMirror.Block.Interop;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Io;

/// <summary>
/// A pipe that carries one read's data from a file to a socket without passing through a buffer of ours
/// (Linux splice(2)): the read moves the file's pages into the pipe, the send moves them on into the socket.
/// Both copies a buffered read makes (page cache to our buffer, our buffer to the socket) go away; a Unix
/// socket takes the pages themselves (Linux 6.5 and later).
/// </summary>
/// <remarks>
/// <para>The pipe holds references to the file's pages, not a copy: a write to the same range before the
/// data leaves can show in it. That is a read overlapping a write, whose result NBD and the block layer
/// leave undefined; a write that completed before the read began is always seen.</para>
/// <para>One request at a time: the reader fills it (<see cref="Length"/> counts what is in it), the sender
/// empties it. A pipe whose data was not all sent (a failed read, a client gone) must be disposed, never
/// reused.</para>
/// </remarks>
public sealed class SplicePipe : IDisposable
{
    /// <summary>The most one pipe holds: Linux's default pipe-max-size, which an unprivileged process may ask for.</summary>
    public const int MaxCapacity = 1 << 20;

    const int PageSize = 4096;

    /// <summary>
    /// Pipes open at once in the process, at most: each costs two descriptors, and a pipe is only ever a faster way,
    /// so they may take a quarter of the descriptors the process may open and never crowd out a connection or a file.
    /// </summary>
    public static readonly int MaxOpen = LibC.GetRLimit(LibC.RLIMIT_NOFILE, out var limit) == 0 ? (int)Math.Min(limit.Current / 8, 1024) : 64;

    static int _open;

    // Empty pipes waiting for any reader in the process. One pool for all, not one per connection: a connection
    // that went quiet would otherwise keep its pipes, and with them the descriptor budget (MaxOpen), while busy
    // ones took buffers. A stack under a lock: no allocation per rent or release once it has grown.
    static readonly Lock IdleLock = new();
    static readonly Stack<SplicePipe> Idle = new();

    readonly int _read;
    readonly int _write;
    bool _disposed;

    // An upper bound of the pipe's slots in use: the kernel holds each file page spliced in, or each page of
    // data written in, in a slot of its own, and a pipe's capacity is a number of slots, not of bytes.
    int _pages;

    SplicePipe(int read, int write, int capacity)
    {
        _read = read;
        _write = write;
        Capacity = capacity;
    }

    /// <summary>Whether this system has splice(2).</summary>
    public static bool Supported => OperatingSystem.IsLinux();

    /// <summary>The end the sender splices from.</summary>
    public int ReadEnd => _read;

    /// <summary>How much the pipe holds at most now.</summary>
    public int Capacity { get; private set; }

    /// <summary>Bytes put in and not yet taken out.</summary>
    public int Length { get; private set; }

    /// <summary>An empty pipe: one another reader released, else a new one; null as <see cref="TryCreate"/>.</summary>
    public static SplicePipe? Rent()
    {
        lock (IdleLock)
        {
            if (Idle.TryPop(out var pipe))
            {
                return pipe;
            }
        }

        return TryCreate();
    }

    /// <summary>
    /// Gives the pipe back once its reader is done with it: an empty one waits for the next reader in the process,
    /// one still holding data (a failed read, a reply not sent) is closed, as its bytes must never reach another reply.
    /// </summary>
    public void Release()
    {
        if (Length == 0 && !_disposed)
        {
            _pages = 0;
            lock (IdleLock)
            {
                if (Idle.Count < MaxOpen)
                {
                    Idle.Push(this);
                    return;
                }
            }
        }

        Dispose();
    }

    /// <summary>Closes every idle pipe (an NBD server that stops gives back the descriptors its clients' reads took).</summary>
    public static void CloseIdle()
    {
        while (true)
        {
            SplicePipe? pipe;
            lock (IdleLock)
            {
                if (!Idle.TryPop(out pipe))
                {
                    return;
                }
            }

            pipe.Dispose();
        }
    }

    /// <summary>Idle pipes, for tests.</summary>
    internal static int IdleCount
    {
        get
        {
            lock (IdleLock)
            {
                return Idle.Count;
            }
        }
    }

    /// <summary>Pipes open in the process (idle or in use), for tests.</summary>
    internal static int OpenCount => Volatile.Read(ref _open);

    /// <summary>A new pipe, or null when none can be made (<see cref="MaxOpen"/> are open, or no descriptors are left): the caller reads the usual way.</summary>
    public static unsafe SplicePipe? TryCreate()
    {
        if (!Supported)
        {
            return null;
        }

        if (Interlocked.Increment(ref _open) > MaxOpen)
        {
            Interlocked.Decrement(ref _open);
            return null;
        }

        var fds = stackalloc int[2];
        // Non-blocking: a read or write that finds the pipe full or empty fails at once instead of waiting for
        // the other end, which is this same connection (every use reserves room first, so this is a safety net).
        if (LibC.Pipe2(fds, LibC.O_CLOEXEC | LibC.O_NONBLOCK) != 0)
        {
            Interlocked.Decrement(ref _open);
            return null;
        }

        var capacity = LibC.FcntlInt(fds[1], LibC.F_GETPIPE_SZ, 0);
        return new SplicePipe(fds[0], fds[1], Math.Max(capacity, 0));
    }

    /// <summary>
    /// Makes room for the bytes of the file range [<paramref name="offset"/>, +<paramref name="length"/>) next to what
    /// the pipe holds, growing it if needed; false when it would pass <paramref name="limit"/> (at most
    /// <see cref="MaxCapacity"/>) or the system refuses (the user's pipe page budget is spent). A splice into a
    /// pipe without room fails, so call this before every read into the pipe, or once with
    /// <see cref="TryReservePages"/> for several.
    /// </summary>
    public bool TryReserve(long offset, int length, int limit = MaxCapacity) => TryReservePages(PagesFor(offset, length), limit);

    /// <summary>Makes room for <paramref name="pages"/> more slots (a sum of <see cref="PagesFor"/>); see <see cref="TryReserve"/>.</summary>
    public bool TryReservePages(long pages, int limit = MaxCapacity)
    {
        var needed = (_pages + pages) * PageSize;
        if (needed <= Capacity)
        {
            return true;
        }

        if (needed > Math.Min(limit, MaxCapacity))
        {
            return false;
        }

        var granted = LibC.FcntlInt(_write, LibC.F_SETPIPE_SZ, (int)needed);
        if (granted < needed)
        {
            return false;
        }

        Capacity = granted;
        return true;
    }

    /// <summary>Slots a file range takes at most: the pages it touches, and one more for data written rather than spliced.</summary>
    public static int PagesFor(long offset, int length) => (int)(((offset % PageSize) + length + PageSize - 1) / PageSize) + 1;

    /// <summary>
    /// One splice(2) of up to <paramref name="length"/> bytes of <paramref name="file"/> at <paramref name="offset"/>
    /// into the pipe (a blocking call: make it on an I/O thread). Returns the bytes moved (0 at the end of the
    /// file), or minus the errno.
    /// </summary>
    public unsafe long SpliceFrom(SafeFileHandle file, long offset, int length)
    {
        var at = offset;
        long moved;
        do
        {
            // Non-blocking on the pipe: a pipe without room (a caller that did not reserve) fails with EAGAIN
            // rather than waiting forever for a reader that is this request's own sender.
            moved = LibC.Splice(file, &at, _write, null, (nuint)length, LibC.SPLICE_F_MOVE | LibC.SPLICE_F_NONBLOCK);
        }
        while (moved < 0 && Marshal.GetLastPInvokeError() == LibC.EINTR);

        if (moved < 0)
        {
            return -Marshal.GetLastPInvokeError();
        }

        Length += (int)moved;
        _pages += PagesFor(offset, (int)moved);
        return moved;
    }

    /// <summary>Copies <paramref name="data"/> into the pipe (data that is not in a file: a read that went the usual way, zeroes).</summary>
    public void Write(ReadOnlySpan<byte> data)
    {
        _pages += PagesFor(0, data.Length);
        WriteUncounted(data);
    }

    /// <summary>Puts <paramref name="length"/> zero bytes in the pipe.</summary>
    public void WriteZeroes(int length)
    {
        _pages += PagesFor(0, length);
        Span<byte> zeroes = stackalloc byte[PageSize];
        zeroes.Clear();
        for (var left = length; left > 0; left -= Math.Min(left, zeroes.Length))
        {
            WriteUncounted(zeroes[..Math.Min(left, zeroes.Length)]);
        }
    }

    unsafe void WriteUncounted(ReadOnlySpan<byte> data)
    {
        fixed (byte* start = data)
        {
            for (var done = 0; done < data.Length;)
            {
                var written = LibC.Write(_write, start + done, (nuint)(data.Length - done));
                if (written < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == LibC.EINTR)
                    {
                        continue;
                    }

                    throw new IOException($"write to a pipe failed: {LibC.Describe(errno)}", errno);
                }

                done += (int)written;
                Length += (int)written;
            }
        }
    }

    /// <summary>Records that the sender took <paramref name="count"/> bytes out through <see cref="ReadEnd"/>.</summary>
    public void Taken(int count)
    {
        Length -= count;
        if (Length == 0)
        {
            _pages = 0;
        }
    }

    /// <summary>Takes up to <paramref name="buffer"/>'s length out into it (the sender's way when the socket is full); returns the bytes taken.</summary>
    public unsafe int ReadInto(Span<byte> buffer)
    {
        fixed (byte* start = buffer)
        {
            while (true)
            {
                var read = LibC.Read(_read, start, (nuint)Math.Min(buffer.Length, Length));
                if (read >= 0)
                {
                    Taken((int)read);
                    return (int)read;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno != LibC.EINTR)
                {
                    throw new IOException($"read from a pipe failed: {LibC.Describe(errno)}", errno);
                }
            }
        }
    }

    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _ = LibC.Close(_read);
            _ = LibC.Close(_write);
            Interlocked.Decrement(ref _open);
        }
    }
}
