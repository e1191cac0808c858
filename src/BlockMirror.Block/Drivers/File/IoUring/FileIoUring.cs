using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using Microsoft.Win32.SafeHandles;
using static BlockMirror.Block.Drivers.File.IoUring.IoUringNative;

namespace BlockMirror.Block.Drivers.File.IoUring;

/// <summary>
/// The file driver's io_uring engine (<c>aio=io_uring</c>): reads, writes (plain and vectored), fdatasync
/// and fallocate go to the kernel as ring entries, submitted and reaped by one thread of the engine.
/// </summary>
/// <remarks>
/// <para>The completion model is <see cref="FileIoThreads"/>'s: each call is a pooled
/// <see cref="IValueTaskSource"/> (nothing allocated per request), and the caller's continuation runs on
/// the engine's thread, so a mirror's next request or an NBD reply is issued from there.</para>
/// <para>One thread sets the ring up and is its only submitter (IORING_SETUP_SINGLE_ISSUER with
/// DEFER_TASKRUN where the kernel has them): the kernel's completion work then runs on that thread while
/// it waits, never by interrupting whichever thread made the call, and requests never belong to a .NET
/// pool thread that may exit (the kernel cancels a task's requests when it exits). Calls its
/// continuations make are placed in the ring at once and submitted together, in the same io_uring_enter
/// that then waits for the next completions. A call from any other thread goes to a queue under a short
/// lock and wakes the thread through an eventfd whose read the ring always has pending (only when the
/// thread is asleep; a wake already sent is not sent again).</para>
/// <para>Bounded: at most <see cref="IoUringRing.Entries"/> entries are in the kernel; further calls wait in
/// the queue (no spinning) until completions free room. The CQ has twice as many slots, so it never
/// overflows.</para>
/// <para>A call keeps its buffers pinned and its handle referenced (SafeHandle.DangerousAddRef) until the
/// kernel is done with them, so a descriptor closed meanwhile is never reused under a running request.
/// Short writes are continued by resubmitting the rest; a read returns what one read gave, as pread does.</para>
/// </remarks>
sealed unsafe class FileIoUring : IFileIo, IDisposable
{
    /// <summary>Ring size: more than the deepest queue the mirror (16) or an NBD client keeps in flight.</summary>
    public const uint DefaultEntries = 256;

    // user_data of the pending eventfd read; operations use their GCHandle, never 1.
    const ulong WakeUserData = 1;

    /// <summary>The engine whose thread this is (its calls go straight into the ring).</summary>
    [ThreadStatic]
    static FileIoUring? t_completing;

    readonly Thread _thread;
    IoUringRing? _ring;
    int _eventFd = -1;

    // The eventfd read's 8-byte buffer, in native memory the kernel may write at any time.
    ulong* _eventValue;

    // Guards the fields below.
    readonly Lock _lock = new();
    readonly Queue<Operation> _incoming = new();
    bool _sleeping;
    bool _wakeSent;
    bool _stopping;

    // Only the engine's thread touches these.
    readonly Queue<Operation> _pending = new();
    int _inFlight;
    uint _unsubmitted;
    bool _wakeArmed;

    readonly FileCallPool<Operation> _pool;

    FileIoUring(uint entries, out string? failure)
    {
        _pool = new FileCallPool<Operation>(() => new Operation(this));
        using var ready = new ManualResetEventSlim();
        string? setupFailure = null;
        _thread = new Thread(() =>
        {
            // The ring is made on the thread that will submit to it (SINGLE_ISSUER binds it to its creator).
            setupFailure = SetUp(entries);
            ready.Set();
            if (setupFailure is null)
            {
                Run();
            }
        })
        { IsBackground = true, Name = "BlockMirror io_uring" };
        _thread.Start();
        ready.Wait();
        failure = setupFailure;
    }

    string? SetUp(uint entries)
    {
        _ring = IoUringRing.TryCreate(entries, out var failure);
        if (_ring is null)
        {
            return failure;
        }

        _eventFd = EventFd(0, EFD_CLOEXEC);
        if (_eventFd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            _ring.Dispose();
            return $"eventfd failed: {LibC.Describe(errno)}";
        }

        _eventValue = (ulong*)NativeMemory.AlignedAlloc(sizeof(ulong), sizeof(ulong));
        return null;
    }

    static readonly Lazy<(FileIoUring? Engine, string? Failure)> SharedEngine = new(() =>
        (TryCreate(DefaultEntries, out var failure), failure));

    /// <summary>One ring for every io_uring file node of the process; null (with <paramref name="failure"/>) where the kernel refuses one.</summary>
    public static FileIoUring? TryGetShared(out string? failure)
    {
        (var engine, failure) = SharedEngine.Value;
        return engine;
    }

    /// <summary>A ring of its own and its thread; null with the reason when io_uring_setup fails.</summary>
    public static FileIoUring? TryCreate(uint entries, out string? failure)
    {
        var engine = new FileIoUring(entries, out failure);
        return failure is null ? engine : null;
    }

    public string Name => "io_uring";

    /// <summary>Entries the ring holds; one is the eventfd read, the others carry calls.</summary>
    public uint Entries => _ring!.Entries;

    public ValueTask<int> ReadAsync(SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        var task = new ValueTask<int>(operation, operation.Version);
        Start(operation, static (op, state) => op.SetRead(state.Handle, state.Buffer, state.Offset),
            (Handle: handle, Buffer: buffer, Offset: offset), cancellationToken);
        return task;
    }

    public ValueTask<long> ReadAsync(SafeFileHandle handle, IReadOnlyList<Memory<byte>> buffers, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        var task = new ValueTask<long>(operation, operation.Version);
        Start(operation, static (op, state) => op.SetVector(IORING_OP_READV, state.Handle, state.Buffers, state.Offset),
            (Handle: handle, Buffers: buffers, Offset: offset), cancellationToken);
        return task;
    }

    public ValueTask WriteAsync(SafeFileHandle handle, ReadOnlyMemory<byte> buffer, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        var task = new ValueTask(operation, operation.Version);
        Start(operation, static (op, state) => op.SetWrite(state.Handle, state.Buffer, state.Offset),
            (Handle: handle, Buffer: buffer, Offset: offset), cancellationToken);
        return task;
    }

    public ValueTask WriteAsync(SafeFileHandle handle, IReadOnlyList<ReadOnlyMemory<byte>> buffers, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        var task = new ValueTask(operation, operation.Version);
        Start(operation, static (op, state) => op.SetVector(IORING_OP_WRITEV, state.Handle, state.Buffers, state.Offset),
            (Handle: handle, Buffers: buffers, Offset: offset), cancellationToken);
        return task;
    }

    public ValueTask<int> FallocateAsync(SafeFileHandle handle, int mode, long offset, long length, CancellationToken cancellationToken)
    {
        var operation = Rent();
        var task = new ValueTask<int>(operation, operation.Version);
        Start(operation, static (op, state) => op.SetFallocate(state.Handle, state.Mode, state.Offset, state.Length),
            (Handle: handle, Mode: mode, Offset: offset, Length: length), cancellationToken);
        return task;
    }

    /// <summary>On the I/O threads: the ring is not worth it for what only NBD's spliced reads use.</summary>
    public ValueTask<long> SpliceAsync(SafeFileHandle handle, long offset, SplicePipe pipe, int length, CancellationToken cancellationToken) =>
        FileIoThreads.Shared.SpliceAsync(handle, offset, pipe, length, cancellationToken);

    public ValueTask<int> DataSyncAsync(SafeFileHandle handle, CancellationToken cancellationToken)
    {
        var operation = Rent();
        var task = new ValueTask<int>(operation, operation.Version);
        Start(operation, static (op, handle) => op.SetDataSync(handle), handle, cancellationToken);
        return task;
    }

    /// <summary>
    /// Fills the operation and submits it; a cancelled token or an argument the call cannot take (a closed
    /// handle) fails the returned task instead, as the I/O threads fail it.
    /// </summary>
    void Start<TState>(Operation operation, Action<Operation, TState> set, TState state, CancellationToken cancellationToken)
    {
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            set(operation, state);
        }
        catch (Exception ex)
        {
            operation.Fail(ex);
            return;
        }

        if (operation.Done)
        {
            // Nothing to send (an empty write).
            operation.Finish(0);
            return;
        }

        Submit(operation);
    }

    Operation Rent() => _pool.Rent();

    void Return(Operation operation)
    {
        if (!_pool.Return(operation))
        {
            operation.Discard();
        }
    }

    /// <summary>On the engine's thread, places the entry now; from any other thread, queues it and wakes the thread if it sleeps.</summary>
    void Submit(Operation operation)
    {
        if (t_completing == this)
        {
            _pending.Enqueue(operation);
            PlacePending();
            return;
        }

        bool wake;
        lock (_lock)
        {
            _incoming.Enqueue(operation);
            wake = _sleeping && !_wakeSent;
            _wakeSent |= wake;
        }

        if (wake)
        {
            Signal(_eventFd);
        }
    }

    /// <summary>Moves queued calls into the ring while it has room (one entry stays for the eventfd read).</summary>
    void PlacePending()
    {
        var ring = _ring!;
        while (_pending.Count > 0 && _inFlight < ring.Entries - 1)
        {
            _pending.Dequeue().Fill(ring.NextSqe());
            ring.Publish();
            _inFlight++;
            _unsubmitted++;
        }
    }

    void ArmWake()
    {
        var sqe = _ring!.NextSqe();
        sqe->Opcode = IORING_OP_READ;
        sqe->Fd = _eventFd;
        sqe->Address = (ulong)_eventValue;
        sqe->Length = sizeof(ulong);
        sqe->UserData = WakeUserData;
        _ring.Publish();
        _unsubmitted++;
        _wakeArmed = true;
    }

    void Run()
    {
        t_completing = this;
        var ring = _ring!;
        while (true)
        {
            lock (_lock)
            {
                while (_incoming.TryDequeue(out var operation))
                {
                    _pending.Enqueue(operation);
                }

                if (_stopping && _inFlight == 0 && _pending.Count == 0)
                {
                    break;
                }

                // Everything queued is taken: a call queued after this sees the flag and wakes us.
                _sleeping = true;
            }

            PlacePending();
            if (!_wakeArmed)
            {
                ArmWake();
            }

            // One system call submits what the last batch's continuations queued and sleeps until a completion.
            var submitted = ring.Enter(_unsubmitted, wait: true);
            lock (_lock)
            {
                _sleeping = false;
            }

            // EINTR (a signal), EAGAIN or EBUSY (short of memory, CQ backlog) submit nothing; what is not
            // submitted is submitted by the next enter, after reaping.
            _unsubmitted -= submitted > 0 ? (uint)submitted : 0;

            var completed = 0;
            while (ring.TryPeek(out var cqe))
            {
                // The slot goes back first: the entry is copied out, and the continuation may run long.
                ring.Advance();
                if (cqe.UserData == WakeUserData)
                {
                    _wakeArmed = false;
                    lock (_lock)
                    {
                        _wakeSent = false;
                    }

                    continue;
                }

                completed++;
                var operation = (Operation)GCHandle.FromIntPtr((nint)cqe.UserData).Target!;
                operation.Complete(cqe.Result);
            }

            _inFlight -= completed;
        }

        ring.Dispose();
        Close(_eventFd);
        NativeMemory.AlignedFree(_eventValue);
    }

    /// <summary>Stops the engine's thread and unmaps the ring; only for an engine of its own with no call in flight.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _stopping = true;
        }

        Signal(_eventFd);
        _thread.Join();
        while (_pool.TryTake(out var operation))
        {
            operation.Discard();
        }
    }

    /// <summary>One call: its pinned buffers and handle while in the kernel, then its result for the awaiting caller. Reused.</summary>
    sealed class Operation : PooledFileCall
    {
        readonly FileIoUring _owner;

        // The entry's user_data: a handle to this operation, made once (pooled operations keep theirs).
        GCHandle _self;

        byte _opcode;
        SafeFileHandle? _handle;
        int _fd;
        long _offset;

        // READ/WRITE: the pinned buffer's address and what is left of it; WRITE continues until none is.
        nint _address;
        long _remaining;
        MemoryHandle _pin;

        // READV/WRITEV: the kernel's iovec array (on the pinned heap: its address never moves) and the pins.
        IoVec[] _iov = [];
        MemoryHandle[] _pins = [];
        int _segments;
        int _firstSegment;

        // FALLOCATE: length and mode.
        long _length;
        int _mode;

        public Operation(FileIoUring owner)
        {
            _owner = owner;
            _self = GCHandle.Alloc(this);
        }

        /// <summary>Nothing left to send (a write of no bytes).</summary>
        public bool Done => _opcode is IORING_OP_WRITE or IORING_OP_WRITEV && _remaining == 0;

        public void SetRead(SafeFileHandle handle, Memory<byte> buffer, long offset)
        {
            SetHandle(IORING_OP_READ, handle, offset);
            _pin = buffer.Pin();
            _address = (nint)_pin.Pointer;
            _remaining = buffer.Length;
        }

        public void SetWrite(SafeFileHandle handle, ReadOnlyMemory<byte> buffer, long offset)
        {
            SetHandle(IORING_OP_WRITE, handle, offset);
            _pin = buffer.Pin();
            _address = (nint)_pin.Pointer;
            _remaining = buffer.Length;
        }

        public void SetVector<T>(byte opcode, SafeFileHandle handle, IReadOnlyList<T> buffers, long offset)
        {
            SetHandle(opcode, handle, offset);
            var count = buffers.Count;
            if (_iov.Length < count)
            {
                _iov = GC.AllocateArray<IoVec>(count, pinned: true);
                _pins = new MemoryHandle[count];
            }

            long total = 0;
            for (var i = 0; i < count; i++)
            {
                var pin = buffers[i] switch
                {
                    Memory<byte> m => (Pin: m.Pin(), m.Length),
                    ReadOnlyMemory<byte> r => (Pin: r.Pin(), r.Length),
                    _ => throw new ArgumentException("buffers must be Memory<byte> or ReadOnlyMemory<byte>"),
                };
                // Counted before anything can throw again, so Release unpins what was pinned.
                _pins[i] = pin.Pin;
                _segments = i + 1;
                _iov[i] = new IoVec { Base = (nint)pin.Pin.Pointer, Length = (nuint)pin.Length };
                total += pin.Length;
            }

            _firstSegment = 0;
            _remaining = total;
        }

        public void SetFallocate(SafeFileHandle handle, int mode, long offset, long length)
        {
            SetHandle(IORING_OP_FALLOCATE, handle, offset);
            _mode = mode;
            _length = length;
        }

        public void SetDataSync(SafeFileHandle handle) => SetHandle(IORING_OP_FSYNC, handle, 0);

        void SetHandle(byte opcode, SafeFileHandle handle, long offset)
        {
            _opcode = opcode;
            var added = false;
            // Throws ObjectDisposedException for a closed handle, as RandomAccess does.
            handle.DangerousAddRef(ref added);
            _handle = handle;
            _fd = (int)handle.DangerousGetHandle();
            _offset = offset;
        }

        /// <summary>Writes the entry for what is left of the call.</summary>
        public void Fill(Sqe* sqe)
        {
            sqe->Opcode = _opcode;
            sqe->Fd = _fd;
            sqe->Offset = (ulong)_offset;
            sqe->UserData = (ulong)GCHandle.ToIntPtr(_self);
            switch (_opcode)
            {
                case IORING_OP_READ:
                case IORING_OP_WRITE:
                    sqe->Address = (ulong)_address;
                    sqe->Length = (uint)_remaining;
                    break;
                case IORING_OP_READV:
                case IORING_OP_WRITEV:
                    sqe->Address = (ulong)Unsafe.AsPointer(ref _iov[_firstSegment]);
                    sqe->Length = (uint)(_segments - _firstSegment);
                    break;
                case IORING_OP_FSYNC:
                    sqe->OpFlags = IORING_FSYNC_DATASYNC;
                    break;
                case IORING_OP_FALLOCATE:
                    sqe->Address = (ulong)_length;
                    sqe->Length = (uint)_mode;
                    break;
                default:
                    throw new UnreachableException();
            }
        }

        /// <summary>On the completion thread: the kernel's result for the entry; finishes the call or sends the rest.</summary>
        public void Complete(int result)
        {
            if (result is -LibC.EAGAIN or -LibC.EINTR)
            {
                // Nothing was done: send it again (pread and pwrite are retried the same way).
                _owner.Submit(this);
                return;
            }

            switch (_opcode)
            {
                case IORING_OP_FSYNC:
                case IORING_OP_FALLOCATE:
                    // Callers take the errno as a value, as from the I/O threads.
                    Finish(result < 0 ? -result : 0);
                    return;
                case IORING_OP_READ:
                case IORING_OP_READV:
                    if (result < 0)
                    {
                        Fail(ErrnoExceptions.For(-result));
                    }
                    else
                    {
                        Finish(result);
                    }

                    return;
            }

            if (result < 0)
            {
                Fail(ErrnoExceptions.For(-result));
                return;
            }

            // A write: continue a short one from where it stopped, as RandomAccess.Write does.
            _remaining -= result;
            _offset += result;
            if (_remaining == 0)
            {
                Finish(0);
                return;
            }

            if (_opcode == IORING_OP_WRITE)
            {
                _address += result;
            }
            else
            {
                SkipWritten(result);
            }

            _owner.Submit(this);
        }

        void SkipWritten(long written)
        {
            while (written > 0)
            {
                ref var segment = ref _iov[_firstSegment];
                if (written < (long)segment.Length)
                {
                    segment.Base += (nint)written;
                    segment.Length -= (nuint)written;
                    return;
                }

                written -= (long)segment.Length;
                _firstSegment++;
            }
        }

        public void Finish(long result)
        {
            Release();
            SetResult(result);
        }

        public void Fail(Exception error)
        {
            Release();
            SetException(error);
        }

        /// <summary>Unpins the buffers and lets go of the handle: the caller may reuse them once the call completes.</summary>
        public void Release()
        {
            _pin.Dispose();
            _pin = default;
            for (var i = 0; i < _segments; i++)
            {
                _pins[i].Dispose();
                _pins[i] = default;
            }

            _segments = 0;
            if (_handle is not null)
            {
                _handle.DangerousRelease();
                _handle = null;
            }
        }

        /// <summary>Frees the handle the ring knows this operation by, when it leaves the pool for good.</summary>
        public void Discard() => _self.Free();

        protected override void ReturnToPool() => _owner.Return(this);
    }
}
