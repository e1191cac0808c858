using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Interop;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// Creating an image where a file may already be: <c>qemu-img create</c> and <c>drive-mirror</c> with
/// <c>mode=absolute-paths</c>. QEMU truncates the old file and then writes the new image into it, so a creation
/// that fails half-way (a size the file system refuses, a full disk) has already destroyed the old file. Here
/// the new image is written beside it under a temporary name and renamed over it only once it is whole: a
/// refused or failed creation leaves the old file as it was.
/// </summary>
/// <remarks>
/// The old file is held, while its replacement is written, with the locks QEMU's creation takes (write and
/// resize, resize shared with nobody): a process that holds it already refuses the creation, and none opens it
/// for writing meanwhile. A symbolic link at the path is followed, as QEMU's open follows it: the file it names
/// is the one replaced (made, if missing), beside itself, and the link stays. Hard links to the old file keep
/// the old contents. What is not a regular file (a block device, a FIFO) is refused before anything is made:
/// a rename would put a file in the device's place, where QEMU writes the image onto the device.
/// </remarks>
public static class ImageReplacement
{
    /// <summary>
    /// Runs <paramref name="create"/> on a temporary name in <paramref name="path"/>'s directory, flushes what it
    /// wrote, renames it over <paramref name="path"/> and flushes the directory: without both flushes a power loss
    /// soon after could leave the name pointing at an empty file where the old one was.
    /// </summary>
    /// <exception cref="Graph.BlockGraphException">Another user holds the file at <paramref name="path"/> (QEMU's lock error).</exception>
    /// <exception cref="BlockOpenException">
    /// The creation failed; its message names <paramref name="path"/>, never the temporary name, and a size the
    /// file system refuses (EFBIG) is told in QEMU's words for <paramref name="format"/>.
    /// </exception>
    public static void Replace(string path, string format, Action<string> create)
    {
        var full = FinalTarget(path);
        FileDriver.RequireRegular(path, FileStatus.KindOf(full));

        var directory = Path.GetDirectoryName(full) ?? ".";
        var temporary = Path.Combine(directory, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        // The name as given: QEMU's lock error names the image as the user did.
        using var held = FileLocks.HoldForReplace(path);
        try
        {
            create(temporary);
            using (var written = System.IO.File.OpenHandle(temporary, FileMode.Open, FileAccess.ReadWrite))
            {
                RandomAccess.FlushToDisk(written);
            }

            System.IO.File.Move(temporary, full, overwrite: true);
            DirectorySync.Flush(directory);
        }
        catch (BlockOpenException ex) when (ex.Errno == Io.BlockErrno.EFBIG)
        {
            DeleteIfThere(temporary);
            throw new BlockOpenException(TooLarge(format), ex.Errno, ex);
        }
        catch (BlockOpenException ex) when (ex.Message.Contains(temporary, StringComparison.Ordinal))
        {
            DeleteIfThere(temporary);
            throw new BlockOpenException(ex.Message.Replace(temporary, path, StringComparison.Ordinal), ex.Errno, ex) { Hint = ex.Hint };
        }
        catch
        {
            DeleteIfThere(temporary);
            throw;
        }
    }

    /// <summary>
    /// QEMU's words for a creation the size defeats (bdrv_img_create on EFBIG), with its hint where the format has
    /// a cluster size.
    /// </summary>
    public static string TooLarge(string format) =>
        $"The image size is too large for file format '{format}'{(format == DriverNames.Qcow2 ? " (try using a larger cluster size)" : "")}";

    /// <summary>
    /// The absolute path <paramref name="path"/> leads to through its symbolic links, the last one's target even if
    /// that does not exist yet (open with O_CREAT makes it there); <paramref name="path"/> itself when it is no link.
    /// </summary>
    /// <exception cref="BlockOpenException">The links do not end (ELOOP), as QEMU's open reports.</exception>
    public static string FinalTarget(string path)
    {
        try
        {
            var full = Path.GetFullPath(path);
            try
            {
                return System.IO.File.ResolveLinkTarget(full, returnFinalTarget: true)?.FullName ?? full;
            }
            catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
            {
                // Nothing there, not even a link: the creation makes the file at the path (or reports why not).
                return full;
            }
        }
        catch (IOException ex) when (ex.HResult is not (> 0 and < 4096))
        {
            // .NET's "too many levels of symbolic links" carries no errno.
            throw new BlockOpenException($"Could not create '{path}': {Interop.LibC.Describe((int)Io.BlockErrno.ELOOP)}", Io.BlockErrno.ELOOP, ex);
        }
        catch (IOException ex)
        {
            throw BlockOpenException.CouldNotCreate(path, ex);
        }
    }

    /// <summary>File.Delete, except that a missing directory is not an error (it would hide the real one).</summary>
    static void DeleteIfThere(string path)
    {
        if (System.IO.File.Exists(path))
        {
            System.IO.File.Delete(path);
        }
    }
}
