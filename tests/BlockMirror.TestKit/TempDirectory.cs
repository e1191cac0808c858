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
    public static TempDirectory InMemory(string prefix = "blockmirror-test-")
    {
        const string Shm = "/dev/shm";
        if (!Directory.Exists(Shm))
        {
            return new TempDirectory(prefix);
        }

        var path = System.IO.Path.Combine(Shm, prefix + Guid.NewGuid().ToString("N")[..12]);
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
