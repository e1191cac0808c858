using BlockMirror.Block.Io;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers.File;

/// <summary>
/// The engine the file driver hands its data calls to (QEMU's <c>aio</c> option):
/// <see cref="FileIoThreads"/> (blocking calls on I/O threads) or <see cref="IoUring.FileIoUring"/>.
/// </summary>
/// <remarks>
/// Both complete a call by running the caller's continuation on the engine's own thread (no hop to the .NET
/// pool), and both mean the same by their results: a read returns how many bytes one read(2) gave; a
/// write writes everything (continuing a short write); a failure is the exception
/// <see cref="RandomAccess"/> throws for that errno; fallocate and fdatasync return 0 or the errno.
/// </remarks>
interface IFileIo
{
    /// <summary>The <c>aio</c> value this engine implements.</summary>
    string Name { get; }

    ValueTask<int> ReadAsync(SafeFileHandle handle, Memory<byte> buffer, long offset, CancellationToken cancellationToken);

    ValueTask<long> ReadAsync(SafeFileHandle handle, IReadOnlyList<Memory<byte>> buffers, long offset, CancellationToken cancellationToken);

    /// <summary>Writes the whole buffer.</summary>
    ValueTask WriteAsync(SafeFileHandle handle, ReadOnlyMemory<byte> buffer, long offset, CancellationToken cancellationToken);

    /// <summary>Writes every buffer, in order, from <paramref name="offset"/> on.</summary>
    ValueTask WriteAsync(SafeFileHandle handle, IReadOnlyList<ReadOnlyMemory<byte>> buffers, long offset, CancellationToken cancellationToken);

    /// <summary>fallocate: 0, or the errno it failed with.</summary>
    ValueTask<int> FallocateAsync(SafeFileHandle handle, int mode, long offset, long length, CancellationToken cancellationToken);

    /// <summary>fdatasync: 0, or the errno it failed with.</summary>
    ValueTask<int> DataSyncAsync(SafeFileHandle handle, CancellationToken cancellationToken);

    /// <summary>One splice(2) of up to <paramref name="length"/> bytes at <paramref name="offset"/> into the pipe: the bytes moved (0 at the end of the file), or minus the errno.</summary>
    ValueTask<long> SpliceAsync(SafeFileHandle handle, long offset, SplicePipe pipe, int length, CancellationToken cancellationToken);
}
