using BlockMirror.Block.Drivers.File.IoUring;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers.File;

/// <summary>
/// The default engine where the kernel has io_uring: a call that finds both engines idle is made on an I/O
/// thread, any other goes into the ring.
/// </summary>
/// <remarks>
/// <para>Why both. One call at a time (a guest's synchronous writes, fio at depth 1) is answered sooner by a
/// blocking call on a warm I/O thread: the ring's thread must first be woken to submit it (an eventfd write
/// and a wake-up), and ext4 hands a buffered write in the ring to a kernel worker anyway. Many calls at once
/// (a mirror's 16 copies, an NBD client's pipelined requests) cost less in the ring: one system call submits
/// a batch and reaps another, with no thread woken per call. Measured on 2026-12-06 on the 2-core bench host,
/// fio writing 4 KiB through NBD to a buffered raw export: at depth 1, 63 µs per write on the threads and 93
/// µs in the ring; at depth 16, 46,500 writes/s on the threads and 59,000 in the ring (with O_DIRECT 30,900
/// and 48,800, with a sixth of the context switches).</para>
/// <para>So the first call to arrive while nothing is in flight on either engine takes the thread; a call
/// that arrives while another is still in flight, or that a ring completion's continuation makes (already on
/// the ring's thread, which submits it with its next wait at no extra cost), goes to the ring. The two
/// engines mean the same by every result (<see cref="IFileIo"/>), and calls in flight at the same time were
/// never ordered, so which one makes a call changes nothing a caller can see but its latency.</para>
/// </remarks>
sealed class FileIoAdaptive(FileIoUring ring, FileIoThreads threads) : IFileIo
{
    /// <summary>Reported as the engine's name (there is no such <c>aio</c> value: a node gets it by not naming one).</summary>
    public const string AdaptiveName = "default";

    public string Name => AdaptiveName;

    /// <summary>
    /// A background copy's writes go to the threads: with a guest writing next to the copy, the ring's writes
    /// kept more requests queued at the disk ahead of the guest's (bench/README.md, "The default file engine").
    /// </summary>
    public IFileIo Background => threads;

    /// <summary>The engine the next call goes to.</summary>
    internal IFileIo Pick() => ring.OnEngineThread || ring.Busy || threads.Busy ? ring : threads;

    public ValueTask<int> ReadAsync(SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken) =>
        Pick().ReadAsync(handle, buffer, offset, cancellationToken);

    public ValueTask<long> ReadAsync(SafeFileHandle handle, IReadOnlyList<Memory<byte>> buffers, long offset, CancellationToken cancellationToken) =>
        Pick().ReadAsync(handle, buffers, offset, cancellationToken);

    public ValueTask WriteAsync(SafeFileHandle handle, ReadOnlyMemory<byte> buffer, long offset, CancellationToken cancellationToken) =>
        Pick().WriteAsync(handle, buffer, offset, cancellationToken);

    public ValueTask WriteAsync(SafeFileHandle handle, IReadOnlyList<ReadOnlyMemory<byte>> buffers, long offset, CancellationToken cancellationToken) =>
        Pick().WriteAsync(handle, buffers, offset, cancellationToken);

    public ValueTask<int> FallocateAsync(SafeFileHandle handle, int mode, long offset, long length, CancellationToken cancellationToken) =>
        Pick().FallocateAsync(handle, mode, offset, length, cancellationToken);

    public ValueTask<int> DataSyncAsync(SafeFileHandle handle, CancellationToken cancellationToken) =>
        Pick().DataSyncAsync(handle, cancellationToken);
}
