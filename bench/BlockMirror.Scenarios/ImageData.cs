namespace BlockMirror.Scenarios;

/// <summary>Builds the input images once and reuses them across runs (they are large).</summary>
static class ImageData
{
    /// <summary>A raw file of random data.</summary>
    public static string Dense(string directory, long size)
    {
        var path = Path.Combine(directory, $"dense-{size >> 20}M.raw");
        if (!File.Exists(path) || new FileInfo(path).Length != size)
        {
            Console.Error.WriteLine($"creating {path} ...");
            Runner.Run($"head -c {size} /dev/urandom > '{path}.tmp' && mv '{path}.tmp' '{path}'");
        }

        return path;
    }

    /// <summary>A sparse raw file of <paramref name="size"/> with <paramref name="data"/> bytes of random data in scattered 1 MiB pieces (fixed seed).</summary>
    public static string Sparse(string directory, long size, long data)
    {
        var path = Path.Combine(directory, $"sparse-{size >> 20}M-{data >> 20}M.raw");
        if (File.Exists(path) && new FileInfo(path).Length == size)
        {
            return path;
        }

        Console.Error.WriteLine($"creating {path} ...");
        const int Piece = 1 << 20;
        var random = new Random(7);
        var slots = Enumerable.Range(0, (int)(size / Piece)).OrderBy(_ => random.Next()).Take((int)(data / Piece)).Order().ToArray();
        var buffer = new byte[Piece];
        using (var handle = File.OpenHandle(path + ".tmp", FileMode.Create, FileAccess.ReadWrite))
        {
            RandomAccess.SetLength(handle, size);
            foreach (var slot in slots)
            {
                random.NextBytes(buffer);
                RandomAccess.Write(handle, buffer, (long)slot * Piece);
            }
        }

        File.Move(path + ".tmp", path, overwrite: true);
        return path;
    }

    /// <summary>The same data as a qcow2 (64 KiB clusters) next to the raw file, made once by qemu-img convert.</summary>
    public static string Qcow2(string raw)
    {
        var path = Path.ChangeExtension(raw, ".qcow2");
        if (!File.Exists(path))
        {
            Console.Error.WriteLine($"creating {path} ...");
            Runner.Run($"qemu-img convert -f raw -O qcow2 -o cluster_size=64k '{raw}' '{path}.tmp' && mv '{path}.tmp' '{path}'");
        }

        return path;
    }
}
