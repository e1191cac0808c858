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

    /// <summary>Where extent <paramref name="index"/> of <see cref="Extents"/> starts: the disk cut into equal strides, rounded to MiB.</summary>
    public static long ExtentOffset(long size, int extents, int index) => index * (size / extents >> 20 << 20);

    /// <summary>
    /// A sparse raw file of <paramref name="size"/> holding <paramref name="extents"/> extents of
    /// <paramref name="extent"/> bytes of random data (fixed seed), one at the start of each equal stride.
    /// </summary>
    public static string Extents(string directory, long size, int extents, long extent, string? name = null)
    {
        var path = Path.Combine(directory, name ?? $"extents-{size >> 20}M-{extents}x{extent >> 20}M.raw");
        if (File.Exists(path) && new FileInfo(path).Length == size)
        {
            return path;
        }

        Console.Error.WriteLine($"creating {path} ...");
        var random = new Random(20);
        var buffer = new byte[1 << 20];
        using (var handle = File.OpenHandle(path + ".tmp", FileMode.Create, FileAccess.ReadWrite))
        {
            RandomAccess.SetLength(handle, size);
            for (var i = 0; i < extents; i++)
            {
                for (long written = 0; written < extent; written += buffer.Length)
                {
                    random.NextBytes(buffer);
                    RandomAccess.Write(handle, buffer, ExtentOffset(size, extents, i) + written);
                }
            }
        }

        File.Move(path + ".tmp", path, overwrite: true);
        return path;
    }

    /// <summary>The data of <see cref="Extents"/> as a qcow2 (64 KiB clusters), made by qemu-img convert; the raw file is not kept.</summary>
    public static string Qcow2Extents(string directory, long size, int extents, long extent)
    {
        var path = Path.Combine(directory, $"extents-{size >> 20}M-{extents}x{extent >> 20}M.qcow2");
        if (!File.Exists(path))
        {
            var raw = Extents(directory, size, extents, extent, Path.GetFileName(path) + ".raw");
            Console.Error.WriteLine($"creating {path} ...");
            Runner.Run($"qemu-img convert -f raw -O qcow2 -o cluster_size=64k '{raw}' '{path}.tmp' && mv '{path}.tmp' '{path}'");
            File.Delete(raw);
        }

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
