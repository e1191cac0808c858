using System.Runtime.InteropServices;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Interop;
using BlockMirror.Block.Io;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Block.Drivers.File;

/// <summary>blockdev-create's options for <c>driver=file</c> (QEMU 7.2's BlockdevCreateOptionsFile).</summary>
public sealed record FileCreateOptions
{
    public required string FileName { get; init; }

    /// <summary>The size in bytes; QAPI's <c>size</c>, so values past <see cref="long.MaxValue"/> arrive too.</summary>
    public required ulong Size { get; init; }

    public PreallocationMode Preallocation { get; init; }

    /// <summary>
    /// <c>nocow</c> and <c>extent-size-hint</c>: placement hints QEMU applies where the file system has them
    /// (btrfs, XFS) and ignores the failure of. Accepted and not applied here.
    /// </summary>
    public bool NoCow { get; init; }

    public ulong? ExtentSizeHint { get; init; }
}

/// <summary>
/// Creates or empties a file and gives it a size, as QEMU's raw_co_create does for blockdev-create: the file is
/// opened (created when missing), its lock taken as a user that writes and resizes it and lets nobody else
/// resize it, then truncated to nothing and grown to the size. An existing file is emptied, as in QEMU, but
/// only once every option has been checked, no other user (process or node) holds it, and this creation holds
/// its lock, so no one can open it in between.
/// </summary>
public static class FileCreate
{
    const int ZeroChunk = 64 * 1024;

    /// <summary>QEMU's checks that need no file, with its words; null when the options are fine.</summary>
    public static string? Validate(FileCreateOptions options) => options switch
    {
        { ExtentSizeHint: > uint.MaxValue } => "Extent size hint is too large",
        // QEMU finds these only after it has emptied the file (file-posix's truncate refuses them).
        { Preallocation: PreallocationMode.Metadata } => $"Unsupported preallocation mode: {options.Preallocation.ToWireName()}",
        { Size: > long.MaxValue } => $"Could not resize file: {LibC.Describe(LibC.EINVAL)}",
        _ => null,
    };

    /// <summary>Creates the file; <paramref name="graph"/>'s nodes count as users of it.</summary>
    /// <exception cref="BlockOpenException">The file could not be created or sized (QEMU's words).</exception>
    /// <exception cref="BlockGraphException">Another user holds the file.</exception>
    public static void Create(FileCreateOptions options, BlockGraph graph)
    {
        if (Validate(options) is { } problem)
        {
            throw new BlockOpenException(problem);
        }

        var path = options.FileName;
        var fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CREAT | LibC.O_CLOEXEC, Convert.ToInt32("644", 8));
        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new BlockOpenException($"Could not create '{path}': {LibC.Describe(errno)}", BlockErrnoText.FromErrno(errno));
        }

        // Closing the descriptor drops the locks.
        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (FileLocks.Supported(handle, FileLockingMode.Auto, path))
        {
            new FileLocks(path, handle).Apply(BlockPermissions.Write | BlockPermissions.Resize, BlockPermissions.All & ~BlockPermissions.Resize);
        }

        // A node of this process whose users share writing (a read-only export) leaves no lock that forbids
        // this; QEMU would empty the file under it. Refused in the words of the lock case.
        if (graph.FindNodeUsingFile(path) is not null)
        {
            throw new BlockGraphException(GraphErrorKind.InUse, "Failed to get \"write\" lock");
        }

        Truncate(handle, 0);
        var size = (long)options.Size;
        switch (options.Preallocation)
        {
            case PreallocationMode.Falloc:
                if (size > 0)
                {
                    if (LibC.FAllocate(handle, 0, 0, size) != 0)
                    {
                        throw new BlockOpenException($"Could not preallocate new data: {LibC.Describe(Marshal.GetLastPInvokeError())}");
                    }

                    AllocateFirstBlock(handle, size);
                }

                break;
            case PreallocationMode.Full:
                Truncate(handle, size);
                WriteZeroes(handle, size);
                break;
            default:
                Truncate(handle, size);
                if (size > 0)
                {
                    AllocateFirstBlock(handle, size);
                }

                break;
        }
    }

    /// <summary>
    /// QEMU's allocate_first_block, which file-posix runs when it grows an empty file without writing it (off,
    /// falloc): zeroes written over the first 4 KiB (512 bytes when the size is below 4 KiB), so that probing the
    /// request alignment later finds an allocated block. As in QEMU, a size below 512 bytes thus becomes 512, and
    /// a failure is ignored.
    /// </summary>
    static void AllocateFirstBlock(SafeFileHandle handle, long size)
    {
        Span<byte> zeroes = stackalloc byte[size < 4096 ? 512 : 4096];
        zeroes.Clear();
        try
        {
            RandomAccess.Write(handle, zeroes, 0);
        }
        catch (IOException)
        {
        }
    }

    static void Truncate(SafeFileHandle handle, long size)
    {
        if (LibC.FTruncate(handle, size) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new BlockOpenException($"Could not resize file: {LibC.Describe(errno)}", BlockErrnoText.FromErrno(errno));
        }
    }

    /// <summary>Writes zeroes over the whole file, so every block is allocated (QEMU's full preallocation).</summary>
    static void WriteZeroes(SafeFileHandle handle, long size)
    {
        var zeroes = new byte[Math.Min(ZeroChunk, size)];
        try
        {
            for (var offset = 0L; offset < size; offset += zeroes.Length)
            {
                RandomAccess.Write(handle, zeroes.AsSpan(0, (int)Math.Min(zeroes.Length, size - offset)), offset);
            }

            RandomAccess.FlushToDisk(handle);
        }
        catch (IOException ex)
        {
            throw new BlockOpenException($"Could not write zeros for preallocation: {ex.Message}", BlockErrno.EIO, ex);
        }
    }
}
