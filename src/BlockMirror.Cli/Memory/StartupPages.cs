using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace BlockMirror.Cli.Memory;

/// <summary>
/// Gives back the pages of a file's read-only mappings that start-up brought in, so the resident set holds what
/// the process uses from then on. Built for the native executable: its start-up reads the runtime's dehydrated
/// type data (2.3 MiB, never read again) and runs code that is scattered across the image (every first touch
/// maps 64 KiB or more around it). In `blockmirror serve` that left 13 MiB of the executable resident while a
/// mirror ran, against QEMU's 3 MiB plus its shared libraries.
/// </summary>
/// <remarks>
/// The pages are dropped with madvise(MADV_DONTNEED). For a page of a private file mapping that was never
/// written this only removes it from the page tables: the next touch maps the same bytes again from the page
/// cache (or the file). A page that was written (copy-on-write: the relocated pointers of the read-only-after-
/// relocation segment, a text relocation) holds the only copy of what was written there, and would be
/// replaced by the file's bytes. Each page is therefore checked in /proc/self/pagemap first, and only a page
/// that is backed by the file, or not present and not swapped, is dropped. Nothing is done when that check
/// cannot be made.
/// </remarks>
static partial class StartupPages
{
    const int MadviseDontNeed = 4;

    // /proc/PID/pagemap: one little-endian 64-bit entry per virtual page (Documentation/admin-guide/mm/pagemap.rst).
    const ulong PagePresent = 1UL << 63;
    const ulong PageSwapped = 1UL << 62;
    const ulong PageFileOrSharedAnonymous = 1UL << 61;

    /// <summary>
    /// In the native executable on Linux, releases the start-up pages of the executable itself. Returns the
    /// bytes released (0 under the JIT, where the executable is the dotnet host, or on another system).
    /// </summary>
    public static long ReleaseExecutable()
    {
        if (!OperatingSystem.IsLinux() || RuntimeFeature.IsDynamicCodeSupported)
        {
            return 0;
        }

        var executable = File.ResolveLinkTarget("/proc/self/exe", returnFinalTarget: true)?.FullName;
        return executable is null ? 0 : Release(executable);
    }

    /// <summary>
    /// Releases the pages of this process's read-only mappings of <paramref name="path"/> (as /proc/self/maps
    /// names it) that hold nothing but the file's own bytes. Returns the bytes of the ranges released.
    /// </summary>
    public static long Release(string path)
    {
        List<(ulong Start, ulong End)> ranges;
        try
        {
            ranges = ReadOnlyMappings(path);
        }
        catch (IOException)
        {
            return 0;
        }

        if (ranges.Count == 0)
        {
            return 0;
        }

        var pageSize = (ulong)Environment.SystemPageSize;
        using var pagemap = TryOpenPagemap();
        if (pagemap is null)
        {
            return 0;
        }

        long released = 0;
        var entries = new byte[8 * 512];
        foreach (var (start, end) in ranges)
        {
            // Runs of pages that may be dropped, ended by a page that must stay (or the mapping's end).
            var runStart = 0UL;
            for (var page = start; page < end;)
            {
                var count = (int)Math.Min((end - page) / pageSize, (ulong)(entries.Length / 8));
                var read = RandomAccess.Read(pagemap, entries.AsSpan(0, count * 8), (long)(page / pageSize * 8));
                if (read != count * 8)
                {
                    return released;
                }

                for (var i = 0; i < count; i++, page += pageSize)
                {
                    var entry = BinaryPrimitives.ReadUInt64LittleEndian(entries.AsSpan(i * 8));
                    var droppable = (entry & PagePresent) != 0
                        ? (entry & PageFileOrSharedAnonymous) != 0
                        : (entry & PageSwapped) == 0;
                    if (droppable && runStart == 0)
                    {
                        runStart = page;
                    }
                    else if (!droppable && runStart != 0)
                    {
                        released += Drop(runStart, page);
                        runStart = 0;
                    }
                }
            }

            if (runStart != 0)
            {
                released += Drop(runStart, end);
            }
        }

        return released;
    }

    static long Drop(ulong start, ulong end) =>
        Madvise((nint)start, (nuint)(end - start), MadviseDontNeed) == 0 ? (long)(end - start) : 0;

    static Microsoft.Win32.SafeHandles.SafeFileHandle? TryOpenPagemap()
    {
        try
        {
            return File.OpenHandle("/proc/self/pagemap", FileMode.Open, FileAccess.Read);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The address ranges of this process's mappings of <paramref name="path"/> that are neither writable nor shared.</summary>
    static List<(ulong Start, ulong End)> ReadOnlyMappings(string path)
    {
        var ranges = new List<(ulong, ulong)>();
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            // start-end perms offset dev inode pathname (the path may hold spaces: it is the rest of the line)
            var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 6 || fields[5] != path)
            {
                continue;
            }

            var perms = fields[1];
            if (perms.Length < 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p')
            {
                continue;
            }

            var dash = fields[0].IndexOf('-', StringComparison.Ordinal);
            ranges.Add((
                ulong.Parse(fields[0].AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                ulong.Parse(fields[0].AsSpan(dash + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture)));
        }

        return ranges;
    }

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int Madvise(nint address, nuint length, int advice);
}
