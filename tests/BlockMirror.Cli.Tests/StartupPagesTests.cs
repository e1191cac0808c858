using System.Runtime.InteropServices;
using BlockMirror.Cli.Memory;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// StartupPages drops the resident pages of a file's read-only private mappings, and must never drop a page that
/// was written before the mapping became read-only (the executable's relocated read-only data is such a page:
/// dropping it would bring back the file's unrelocated bytes).
/// </summary>
public sealed partial class StartupPagesTests : IDisposable
{
    const int ProtRead = 1;
    const int ProtWrite = 2;
    const int MapPrivate = 2;
    const int Pages = 64;

    readonly string _directory = Directory.CreateTempSubdirectory("bm-startup-pages-").FullName;
    readonly int _pageSize = Environment.SystemPageSize;
    readonly List<nint> _mappings = [];

    public void Dispose()
    {
        foreach (var address in _mappings)
        {
            Assert.Equal(0, Munmap(address, (nuint)(Pages * _pageSize)));
        }

        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public void Releases_the_resident_pages_of_a_read_only_mapping_and_the_bytes_read_back_unchanged()
    {
        var (path, content) = MakeFile("image");
        var address = Map(path, ProtRead);
        Assert.Equal(content, Read(address));
        Assert.True(ResidentKiB(address) >= Pages * _pageSize / 1024, $"all {Pages} pages read are resident");

        var released = StartupPages.Release(path);

        Assert.Equal(Pages * _pageSize, released);
        Assert.Equal(0, ResidentKiB(address));
        Assert.Equal(content, Read(address));
    }

    [Fact]
    public void Keeps_a_page_written_before_the_mapping_became_read_only()
    {
        // The shape of relocated read-only data: a private mapping written (copy on write), then made read-only.
        var (path, content) = MakeFile("relro");
        var address = Map(path, ProtRead | ProtWrite);
        var written = 5 * _pageSize;
        for (var i = 0; i < 16; i++)
        {
            Marshal.WriteByte(address, written + i, 0xEE);
            content[written + i] = 0xEE;
        }

        Assert.Equal(0, Mprotect(address, (nuint)(Pages * _pageSize), ProtRead));
        Assert.Equal(content, Read(address));

        var released = StartupPages.Release(path);

        // Every page but the written one is released, and the written one still holds what was written.
        Assert.Equal((Pages - 1) * _pageSize, released);
        Assert.Equal(content, Read(address));
    }

    [Fact]
    public void Leaves_writable_mappings_alone()
    {
        var (path, content) = MakeFile("writable");
        var address = Map(path, ProtRead | ProtWrite);
        Marshal.WriteByte(address, 0, 0x11);
        content[0] = 0x11;

        Assert.Equal(0, StartupPages.Release(path));
        Assert.Equal(content, Read(address));
    }

    (string Path, byte[] Content) MakeFile(string name)
    {
        var content = new byte[Pages * _pageSize];
        new Random(7).NextBytes(content);
        var path = Path.Combine(_directory, name);
        File.WriteAllBytes(path, content);
        return (path, content);
    }

    nint Map(string path, int protection)
    {
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        var address = Mmap(0, (nuint)(Pages * _pageSize), protection, MapPrivate, (int)file.DangerousGetHandle(), 0);
        Assert.NotEqual(-1, address);
        _mappings.Add(address);
        return address;
    }

    byte[] Read(nint address)
    {
        var bytes = new byte[Pages * _pageSize];
        Marshal.Copy(address, bytes, 0, bytes.Length);
        return bytes;
    }

    /// <summary>The mapping's resident kilobytes, from /proc/self/smaps.</summary>
    static long ResidentKiB(nint address)
    {
        var start = ((ulong)address).ToString("x", System.Globalization.CultureInfo.InvariantCulture) + "-";
        var inMapping = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            if (line.Length > 0 && char.IsAsciiHexDigit(line[0]) && line.Contains('-', StringComparison.Ordinal) && !line.EndsWith(':'))
            {
                inMapping = line.StartsWith(start, StringComparison.Ordinal);
            }
            else if (inMapping && line.StartsWith("Rss:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        throw new InvalidOperationException($"no mapping at {start} in /proc/self/smaps");
    }

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int Mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int Munmap(nint address, nuint length);
}
