using System.Diagnostics;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers.File;

/// <summary>
/// The threads that make the file driver's blocking system calls (pread, pwrite, their vectored forms,
/// fdatasync, fallocate, lseek, ftruncate, splice), as QEMU's thread pool (<c>util/thread-pool.c</c>) does for
/// <c>aio=threads</c>: no caller blocks its own thread on the file system, and none needs Task.Run.
/// </summary>
/// <remarks>
/// <para>A call goes to the queue and wakes the thread that went idle last (its stack and cache are
/// warm), or starts a new one while there are fewer than <see cref="MaxThreads"/>. A thread that finishes
/// a call takes the next one queued before it sleeps; one idle for <see cref="IdleTimeout"/> exits.
/// Idle threads sleep at once, they never spin.</para>
/// <para>The first call a continuation makes on an I/O thread is kept for that thread, which makes it
/// as soon as the continuation returns: a chain of requests (a mirror's read then write, a benchmark's
/// next request) stays on one thread without waking another. Further calls from the same continuation go
/// to the queue as usual, so they run in parallel.</para>
/// <para>The caller's continuation runs on the I/O thread when the call completes, as it did on the pool
/// worker with <see cref="RandomAccess"/>'s async methods: an NBD reply is sent from there, a mirror
/// issues its next request from there. A continuation must not block for long (it holds a thread of
/// this pool), and must never wait for another file call to finish.</para>
/// <para>Why not <see cref="RandomAccess"/>'s async methods: they queue each call to the .NET thread
/// pool, whose worker wakes a second worker in case more work follows, and whose idle workers spin
/// (sched_yield) before sleeping. Measured on a 2-core host with <c>blockmirror serve</c> answering 4 KiB
/// NBD writes one at a time (socket completions inline): 5.8 context switches per request through the
/// .NET pool even with its spinning turned off, 3.0 to 3.5 here (half of them the socket thread's), and a
/// request's latency pays for every extra wake-up when the host is busy.</para>
/// </remarks>
sealed class FileIoThreads : IFileIo
{
    /// <summary>QEMU's default max_worker_threads.</summary>
    public const int MaxThreads = 64;

    /// <summary>QEMU lets an idle worker go after 10 seconds.</summary>
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(10);

    /// <summary>One set of threads for every file node of the process, as QEMU has one pool per AioContext.</summary>
    public static FileIoThreads Shared { get; } = new();

    // Guards every field below, and a worker's Idle flag.
    readonly Lock _lock = new();
    readonly Queue<Operation> _queue = new();

    // Idle workers, the one that went idle last at the end.
    readonly List<Worker> _idle = [];
    int _threads;

    public string Name => "threads";

    public ValueTask<int> ReadAsync(SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetRead(handle, buffer, offset, cancellationToken);
        var task = new ValueTask<int>(operation, operation.Version);
        Submit(operation);
        return task;
    }

    public ValueTask<long> ReadAsync(SafeFileHandle handle, IReadOnlyList<Memory<byte>> buffers, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetReadVector(handle, buffers, offset, cancellationToken);
        var task = new ValueTask<long>(operation, operation.Version);
        Submit(operation);
        return task;
    }

    /// <summary>Writes the whole buffer (the call repeats a short write).</summary>
    public ValueTask WriteAsync(SafeFileHandle handle, ReadOnlyMemory<byte> buffer, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetWrite(handle, buffer, offset, cancellationToken);
        var task = new ValueTask(operation, operation.Version);
        Submit(operation);
        return task;
    }

    /// <summary>Writes every buffer, in order, from <paramref name="offset"/> on.</summary>
    public ValueTask WriteAsync(SafeFileHandle handle, IReadOnlyList<ReadOnlyMemory<byte>> buffers, long offset, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetWriteVector(handle, buffers, offset, cancellationToken);
        var task = new ValueTask(operation, operation.Version);
        Submit(operation);
        return task;
    }

    /// <summary>fallocate on an I/O thread: 0, or the errno it failed with.</summary>
    public ValueTask<int> FallocateAsync(SafeFileHandle handle, int mode, long offset, long length, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetFallocate(handle, mode, offset, length, cancellationToken);
        var task = new ValueTask<int>(operation, operation.Version);
        Submit(operation);
        return task;
    }

    /// <summary>fdatasync on an I/O thread: 0, or the errno it failed with.</summary>
    public ValueTask<int> DataSyncAsync(SafeFileHandle handle, CancellationToken cancellationToken) =>
        RunAsync(handle, static handle => LibC.FDataSync(handle) == 0 ? 0 : System.Runtime.InteropServices.Marshal.GetLastPInvokeError(), cancellationToken);

    /// <summary>splice(2) into a pipe on an I/O thread: the bytes moved, or minus the errno.</summary>
    public ValueTask<long> SpliceAsync(SafeFileHandle handle, long offset, SplicePipe pipe, int length, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetSplice(handle, offset, pipe, length, cancellationToken);
        var task = new ValueTask<long>(operation, operation.Version);
        Submit(operation);
        return task;
    }

    /// <summary>lseek on an I/O thread: the new position, or minus the errno it failed with.</summary>
    public ValueTask<long> SeekAsync(SafeFileHandle handle, long offset, int whence, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetSeek(handle, offset, whence, cancellationToken);
        var task = new ValueTask<long>(operation, operation.Version);
        Submit(operation);
        return task;
    }

    /// <summary>Runs <paramref name="call"/> (a blocking system call returning 0 or an errno) on an I/O thread.</summary>
    public ValueTask<int> RunAsync(SafeFileHandle handle, Func<SafeFileHandle, int> call, CancellationToken cancellationToken)
    {
        var operation = Rent();
        operation.SetCall(handle, call, cancellationToken);
        var task = new ValueTask<int>(operation, operation.Version);
        Submit(operation);
        return task;
    }

    readonly FileCallPool<Operation> _pool;

    FileIoThreads() => _pool = new FileCallPool<Operation>(() => new Operation(this));

    Operation Rent() => _pool.Rent();

    void Return(Operation operation) => _pool.Return(operation);

    void Submit(Operation operation)
    {
        if (Worker.Current is { } current && current.Owner == this && current.Next is null)
        {
            // Made by a continuation on one of our threads: that thread makes it next.
            current.Next = operation;
            return;
        }

        Worker? wake = null;
        var start = false;
        lock (_lock)
        {
            _queue.Enqueue(operation);
            if (_idle.Count > 0)
            {
                wake = _idle[^1];
                _idle.RemoveAt(_idle.Count - 1);
                wake.Idle = false;
            }
            else if (_threads < MaxThreads)
            {
                _threads++;
                start = true;
            }

            // Otherwise every thread is busy, and the first to finish takes the call.
        }

        if (wake is not null)
        {
            wake.Wake();
        }
        else if (start)
        {
            var worker = new Worker(this);
            new Thread(worker.Run) { IsBackground = true, Name = "BlockMirror I/O" }.Start();
        }
    }

    /// <summary>The next queued call, or null after this worker has been put on the idle list.</summary>
    Operation? TakeOrGoIdle(Worker worker)
    {
        lock (_lock)
        {
            if (_queue.TryDequeue(out var operation))
            {
                return operation;
            }

            worker.Idle = true;
            _idle.Add(worker);
            return null;
        }
    }

    /// <summary>After a timed-out wait: true (and the thread is counted out) if no call was handed to it meanwhile.</summary>
    bool TryRetire(Worker worker)
    {
        lock (_lock)
        {
            if (!worker.Idle)
            {
                // A submitter took it off the idle list and is waking it: it has work.
                return false;
            }

            worker.Idle = false;
            _idle.Remove(worker);
            _threads--;
            return true;
        }
    }

    sealed class Worker(FileIoThreads threads)
    {
        /// <summary>The worker whose call's continuation is running on this thread, if any.</summary>
        [ThreadStatic]
        public static Worker? Current;

        readonly Parker _parker = new();

        /// <summary>On the idle list (guarded by the owner's lock).</summary>
        public bool Idle;

        /// <summary>A call made by the continuation running on this thread, made next (only this thread touches it).</summary>
        public Operation? Next;

        public FileIoThreads Owner => threads;

        public void Wake() => _parker.Unpark();

        public void Run()
        {
            while (true)
            {
                if (threads.TakeOrGoIdle(this) is { } operation)
                {
                    do
                    {
                        Current = this;
                        operation.Execute();
                        Current = null;
                        operation = Next;
                        Next = null;
                    }
                    while (operation is not null);

                    continue;
                }

                // Woken when a call is queued for it; a wake left over from an earlier round only costs a
                // look at the queue.
                if (!_parker.Park(IdleTimeout) && threads.TryRetire(this))
                {
                    return;
                }
            }
        }
    }

    /// <summary>One call: its arguments while queued, then its result for the awaiting caller. Reused.</summary>
    sealed class Operation(FileIoThreads owner) : PooledFileCall
    {
        enum Kind : byte
        {
            Read,
            ReadVector,
            Write,
            WriteVector,
            Fallocate,
            Seek,
            Splice,
            Call,
        }

        Kind _kind;
        SafeFileHandle? _handle;
        long _offset;

        // fallocate's length; fallocate's mode or lseek's whence.
        long _length;
        int _mode;
        Memory<byte> _buffer;
        IReadOnlyList<Memory<byte>>? _readBuffers;
        IReadOnlyList<ReadOnlyMemory<byte>>? _writeBuffers;
        Func<SafeFileHandle, int>? _call;
        SplicePipe? _pipe;
        CancellationToken _cancellationToken;

        public void SetRead(SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken) =>
            Set(Kind.Read, handle, buffer, offset, cancellationToken);

        public void SetWrite(SafeFileHandle handle, ReadOnlyMemory<byte> buffer, long offset, CancellationToken cancellationToken) =>
            // Only read from (RandomAccess.Write takes a read-only span of it).
            Set(Kind.Write, handle, System.Runtime.InteropServices.MemoryMarshal.AsMemory(buffer), offset, cancellationToken);

        public void SetReadVector(SafeFileHandle handle, IReadOnlyList<Memory<byte>> buffers, long offset, CancellationToken cancellationToken)
        {
            Set(Kind.ReadVector, handle, default, offset, cancellationToken);
            _readBuffers = buffers;
        }

        public void SetWriteVector(SafeFileHandle handle, IReadOnlyList<ReadOnlyMemory<byte>> buffers, long offset, CancellationToken cancellationToken)
        {
            Set(Kind.WriteVector, handle, default, offset, cancellationToken);
            _writeBuffers = buffers;
        }

        public void SetFallocate(SafeFileHandle handle, int mode, long offset, long length, CancellationToken cancellationToken)
        {
            Set(Kind.Fallocate, handle, default, offset, cancellationToken);
            _mode = mode;
            _length = length;
        }

        public void SetSeek(SafeFileHandle handle, long offset, int whence, CancellationToken cancellationToken)
        {
            Set(Kind.Seek, handle, default, offset, cancellationToken);
            _mode = whence;
        }

        public void SetSplice(SafeFileHandle handle, long offset, SplicePipe pipe, int length, CancellationToken cancellationToken)
        {
            Set(Kind.Splice, handle, default, offset, cancellationToken);
            _pipe = pipe;
            _length = length;
        }

        public void SetCall(SafeFileHandle handle, Func<SafeFileHandle, int> call, CancellationToken cancellationToken)
        {
            Set(Kind.Call, handle, default, 0, cancellationToken);
            _call = call;
        }

        void Set(Kind kind, SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken)
        {
            _kind = kind;
            _handle = handle;
            _buffer = buffer;
            _offset = offset;
            _cancellationToken = cancellationToken;
        }

        /// <summary>Makes the call on this (I/O) thread and completes the caller's await.</summary>
        public void Execute()
        {
            long result = 0;
            Exception? error = null;
            try
            {
                _cancellationToken.ThrowIfCancellationRequested();
                var handle = _handle!;
                switch (_kind)
                {
                    case Kind.Read:
                        result = RandomAccess.Read(handle, _buffer.Span, _offset);
                        break;
                    case Kind.ReadVector:
                        result = RandomAccess.Read(handle, _readBuffers!, _offset);
                        break;
                    case Kind.Write:
                        RandomAccess.Write(handle, (ReadOnlySpan<byte>)_buffer.Span, _offset);
                        break;
                    case Kind.WriteVector:
                        RandomAccess.Write(handle, _writeBuffers!, _offset);
                        break;
                    case Kind.Fallocate:
                        result = LibC.FAllocate(handle, _mode, _offset, _length) == 0 ? 0 : System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                        break;
                    case Kind.Seek:
                        result = LibC.LSeek(handle, _offset, _mode);
                        if (result < 0)
                        {
                            result = -System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                        }

                        break;
                    case Kind.Splice:
                        result = _pipe!.SpliceFrom(handle, _offset, (int)_length);
                        break;
                    case Kind.Call:
                        result = _call!(handle);
                        break;
                    default:
                        throw new UnreachableException();
                }
            }
            catch (Exception ex)
            {
                error = ex;
            }

            // Let go of the caller's buffers before the caller can reuse them.
            _handle = null;
            _buffer = default;
            _readBuffers = null;
            _writeBuffers = null;
            _call = null;
            _pipe = null;
            _cancellationToken = default;
            if (error is null)
            {
                SetResult(result);
            }
            else
            {
                SetException(error);
            }
        }

        protected override void ReturnToPool() => owner.Return(this);
    }
}
