namespace BlockMirror.TestKit;

/// <summary>A directory under the system temp folder, deleted with everything in it on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory(string prefix = "blockmirror-test-") => Path = Directory.CreateTempSubdirectory(prefix).FullName;

    TempDirectory(string path, bool _) => Path = path;

    /// <summary>
    /// A directory in memory (/dev/shm, tmpfs) where there is one, else in the temp folder: for tests that
    /// flush a lot and are about correctness, not durability (an fdatasync costs milliseconds on a disk).
    /// </summary>
    public static TempDirectory InMemory(string prefix = "blockmirror-test-") => Under("/dev/shm", prefix);

    /// <summary>
    /// A directory under /var/tmp, which by convention is on a disk file system, unlike /tmp (often a tmpfs):
    /// for tests about what a disk file system does (O_DIRECT, block allocation).
    /// </summary>
    public static TempDirectory OnDisk(string prefix = "blockmirror-test-") => Under("/var/tmp", prefix);

    /// <summary>A new directory in <paramref name="root"/>, or in the temp folder if there is no such root.</summary>
    static TempDirectory Under(string root, string prefix)
    {
        if (!Directory.Exists(root))
        {
            return new TempDirectory(prefix);
        }

        var path = System.IO.Path.Combine(root, prefix + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(path);
        return new TempDirectory(path, true);
    }

    public string Path { get; }

    /// <summary>A path inside the directory (the file is not created).</summary>
    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // A process under test may still hold a file open; the OS cleans /tmp eventually.
        }
    }
}
