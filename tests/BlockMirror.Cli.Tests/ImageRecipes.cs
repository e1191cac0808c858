using System.Buffers.Binary;
using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Images made by the real qemu-img and qemu-io (never by BlockMirror), by name, so that a test can run
/// blockmirror and qemu-img side by side on each of them. Every recipe builds its image in a directory of
/// its own and returns the path of the top image; a failing test names its recipe, and
/// <see cref="Describe"/> gives the commands that rebuild it.
/// </summary>
static class ImageRecipes
{
    /// <summary>The qemu-io writes of the issue: data, written zeroes, a discard.</summary>
    static readonly string[] BasicWrites = ["write -P 0x11 0 64k", "write -z 1M 64k", "discard 2M 64k"];

    static readonly Dictionary<string, (string Description, Func<string, Task<string>> Build)> Recipes = new()
    {
        ["written"] = ("qemu-img create -f qcow2 img.qcow2 4M; qemu-io -c 'write -P 0x11 0 64k' -c 'write -z 1M 64k' -c 'discard 2M 64k' img.qcow2",
            dir => Qcow2Async(dir, "img.qcow2", "4M", [], BasicWrites)),
        ["empty"] = ("qemu-img create -f qcow2 img.qcow2 4M",
            dir => Qcow2Async(dir, "img.qcow2", "4M", [], [])),
        ["chain3"] = ("base.qcow2 4M as 'written'; mid.qcow2 -b base.qcow2 -F qcow2, 'write -P 0x22 64k 64k' 'write -z 2M 128k'; " +
            "top.qcow2 -b mid.qcow2 -F qcow2, 'write -P 0x33 3M 128k' 'write -z 0 32k' 'write -P 0x44 1M 4k'",
            BuildChain3Async),
        ["cluster512"] = ("qemu-img create -f qcow2 -o cluster_size=512 img.qcow2 2M; qemu-io 'write -P 0x11 0 64k' 'write -z 1M 64k' " +
            "'discard 1984k 64k' 'write -P 0x22 1536k 700' 'write -P 0x23 1900k 1k'",
            dir => Qcow2Async(dir, "img.qcow2", "2M", ["-o", "cluster_size=512"],
                ["write -P 0x11 0 64k", "write -z 1M 64k", "discard 1984k 64k", "write -P 0x22 1536k 700", "write -P 0x23 1900k 1k"])),
        ["cluster2M"] = ("qemu-img create -f qcow2 -o cluster_size=2M img.qcow2 9M; qemu-io 'write -P 0x11 0 64k' 'write -z 2M 2M' " +
            "'write -P 0x22 5M 1k' 'discard 8M 1M'",
            dir => Qcow2Async(dir, "img.qcow2", "9M", ["-o", "cluster_size=2M"],
                ["write -P 0x11 0 64k", "write -z 2M 2M", "write -P 0x22 5M 1k", "discard 8M 1M"])),
        ["compat010"] = ("qemu-img create -f qcow2 -o compat=0.10 img.qcow2 4M; qemu-io (the 'written' writes) 'write -P 0x55 3M 4k'",
            dir => Qcow2Async(dir, "img.qcow2", "4M", ["-o", "compat=0.10"], [.. BasicWrites, "write -P 0x55 3M 4k"])),
        ["lazy-refcount1"] = ("qemu-img create -f qcow2 -o lazy_refcounts=on,refcount_bits=1,cluster_size=4k img.qcow2 4M; qemu-io (the 'written' writes)",
            dir => Qcow2Async(dir, "img.qcow2", "4M", ["-o", "lazy_refcounts=on,refcount_bits=1,cluster_size=4k"], BasicWrites)),
        ["compressed"] = ("raw 2M with 'write -P 0x41 0 256k' 'write -P 0x42 1M 64k' 'write -z 1536k 64k'; qemu-img convert -c -O qcow2 src.raw img.qcow2",
            BuildCompressedAsync),
        ["zero-alloc"] = ("qemu-img create -f qcow2 img.qcow2 4M; qemu-io 'write -P 0x11 0 128k' 'write -z 0 64k' 'write -z -u 64k 64k'",
            dir => Qcow2Async(dir, "img.qcow2", "4M", [], ["write -P 0x11 0 128k", "write -z 0 64k", "write -z -u 64k 64k"])),
        ["extended-l2"] = ("qemu-img create -f qcow2 -o extended_l2=on img.qcow2 4M; qemu-io 'write -P 0x11 4k 4k' 'write -z 64k 8k' " +
            "'write -P 0x12 1M 64k' 'write -z 1M 4k'",
            dir => Qcow2Async(dir, "img.qcow2", "4M", ["-o", "extended_l2=on"],
                ["write -P 0x11 4k 4k", "write -z 64k 8k", "write -P 0x12 1M 64k", "write -z 1M 4k"])),
        ["snapshots"] = ("qemu-img create -f qcow2 img.qcow2 4M; qemu-io 'write -P 0x11 0 128k'; qemu-img snapshot -c first; " +
            "qemu-io 'write -P 0x22 0 64k'; qemu-img snapshot -c second-with-a-long-name; qemu-io 'write -P 0x33 1M 64k'",
            async dir =>
            {
                var path = await Qcow2Async(dir, "img.qcow2", "4M", [], ["write -P 0x11 0 128k"]);
                await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "first", path);
                await QemuIoAsync(path, "qcow2", ["write -P 0x22 0 64k"]);
                await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "second-with-a-long-name", path);
                await QemuIoAsync(path, "qcow2", ["write -P 0x33 1M 64k"]);
                return path;
            }),
        ["bitmaps"] = ("qemu-img create -f qcow2 img.qcow2 4M; qemu-img bitmap --add img.qcow2 b0; qemu-img bitmap --add --disable -g 128k img.qcow2 b1; " +
            "qemu-io (the 'written' writes); qemu-img bitmap --add -g 512 img.qcow2 b2",
            async dir =>
            {
                var path = await Qcow2Async(dir, "img.qcow2", "4M", [], []);
                await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", path, "b0");
                await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--disable", "-g", "128k", path, "b1");
                await QemuIoAsync(path, "qcow2", BasicWrites);
                await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "-g", "512", path, "b2");
                return path;
            }),
        ["raw"] = ("qemu-img create -f raw img.raw 4M; qemu-io -f raw 'write -P 0x11 0 64k' 'write -P 0x12 1M 4k' 'write -z 2M 64k'",
            async dir =>
            {
                var path = Path.Combine(dir, "img.raw");
                await QemuImages.CreateAsync(path, "4M", "write -P 0x11 0 64k", "write -P 0x12 1M 4k", "write -z 2M 64k");
                return path;
            }),
        ["raw-backing"] = ("base.raw 4M as 'raw'; top.qcow2 -b base.raw -F raw 4M, 'write -P 0x66 1M 64k' 'write -z 0 64k'",
            async dir =>
            {
                await QemuImages.CreateAsync(Path.Combine(dir, "base.raw"), "4M", "write -P 0x11 0 64k", "write -P 0x12 1M 4k", "write -z 2M 64k");
                return await Qcow2Async(dir, "top.qcow2", null, ["-b", "base.raw", "-F", "raw"], ["write -P 0x66 1M 64k", "write -z 0 64k"]);
            }),
        ["short-backing"] = ("base.qcow2 2M 'write -P 0x11 0 2M'; top.qcow2 -b base.qcow2 -F qcow2 4M, 'write -P 0x22 3M 64k'",
            async dir =>
            {
                await Qcow2Async(dir, "base.qcow2", "2M", [], ["write -P 0x11 0 2M"]);
                return await Qcow2Async(dir, "top.qcow2", "4M", ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x22 3M 64k"]);
            }),
    };

    /// <summary>Every recipe, for theories over images.</summary>
    public static TheoryData<string> All => [.. Recipes.Keys];

    /// <summary>The qcow2 recipes (those qemu-img check can check).</summary>
    public static TheoryData<string> Qcow2 => [.. Recipes.Keys.Where(k => k is not "raw")];

    /// <summary>How the recipe's images are made, for failure messages and the report.</summary>
    public static string Describe(string name) => $"{name}: {Recipes[name].Description}";

    /// <summary>Builds the recipe in a new subdirectory of <paramref name="root"/>; returns the top image.</summary>
    public static Task<string> BuildAsync(string name, TempDirectory root)
    {
        ExternalTool.Require("qemu-img");
        ExternalTool.Require("qemu-io");
        var dir = Path.Combine(root.Path, name);
        Directory.CreateDirectory(dir);
        return Recipes[name].Build(dir);
    }

    /// <summary>qemu-img create -f qcow2 with the extra arguments, then the qemu-io commands in one qemu-io run.</summary>
    public static async Task<string> Qcow2Async(string dir, string name, string? size, string[] createArguments, string[] writes)
    {
        var path = Path.Combine(dir, name);
        string[] create = ["create", "-q", "-f", "qcow2", .. createArguments, path];
        await ExternalTool.RunCheckedAsync("qemu-img", size is null ? create : [.. create, size]);
        await QemuIoAsync(path, "qcow2", writes);
        return path;
    }

    public static async Task QemuIoAsync(string path, string format, IEnumerable<string> commands)
    {
        var arguments = new List<string> { "-f", format };
        foreach (var command in commands)
        {
            arguments.Add("-c");
            arguments.Add(command);
        }

        if (arguments.Count == 2)
        {
            return;
        }

        arguments.Add(path);
        var output = await ExternalTool.RunCheckedAsync("qemu-io", [.. arguments]);
        Assert.DoesNotContain("failed", output, StringComparison.OrdinalIgnoreCase);
    }

    static async Task<string> BuildChain3Async(string dir)
    {
        await Qcow2Async(dir, "base.qcow2", "4M", [], BasicWrites);
        await Qcow2Async(dir, "mid.qcow2", null, ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x22 64k 64k", "write -z 2M 128k"]);
        return await Qcow2Async(dir, "top.qcow2", null, ["-b", "mid.qcow2", "-F", "qcow2"],
            ["write -P 0x33 3M 128k", "write -z 0 32k", "write -P 0x44 1M 4k"]);
    }

    static async Task<string> BuildCompressedAsync(string dir)
    {
        var source = Path.Combine(dir, "src.raw");
        await QemuImages.CreateAsync(source, "2M", "write -P 0x41 0 256k", "write -P 0x42 1M 64k", "write -z 1536k 64k");
        var path = Path.Combine(dir, "img.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", source, path);
        return path;
    }

    // ----- Damage, done with a hex editor's precision -----

    /// <summary>The header fields a poke needs.</summary>
    public sealed record Qcow2Layout(int ClusterBits, long RefcountTableOffset, long L1TableOffset, int RefcountOrder)
    {
        public int ClusterSize => 1 << ClusterBits;
    }

    public static Qcow2Layout ReadLayout(string path)
    {
        var header = new byte[104];
        using (var stream = File.OpenRead(path))
        {
            stream.ReadExactly(header);
        }

        var version = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        return new Qcow2Layout(
            (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(20)),
            (long)BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(48)),
            (long)BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(40)),
            version >= 3 ? (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(96)) : 4);
    }

    /// <summary>Sets the 16-bit refcount of host cluster <paramref name="cluster"/> (covered by the first refcount block).</summary>
    public static void PokeRefcount(string path, long cluster, ushort refcount)
    {
        var layout = ReadLayout(path);
        Assert.Equal(4, layout.RefcountOrder);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        var entry = new byte[8];
        stream.Position = layout.RefcountTableOffset;
        stream.ReadExactly(entry);
        var block = (long)BinaryPrimitives.ReadUInt64BigEndian(entry);
        Assert.True(block != 0 && cluster < layout.ClusterSize / 2, "the poke needs the first refcount block to cover the cluster");
        var value = new byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(value, refcount);
        stream.Position = block + cluster * 2;
        stream.Write(value);
    }

    /// <summary>Overwrites bytes at an offset of the file.</summary>
    /// <summary>The bitmaps header extension: the bitmap count, the directory's size and offset, and where the extension's body is.</summary>
    public static (uint Count, ulong DirectorySize, long DirectoryOffset) ReadBitmapsExtension(string path) =>
        ReadBitmapsExtension(File.ReadAllBytes(path), out _);

    static (uint Count, ulong DirectorySize, long DirectoryOffset) ReadBitmapsExtension(byte[] bytes, out int body)
    {
        var position = (int)BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(100));
        while (BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(position)) is var type and not 0)
        {
            var length = (int)BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(position + 4));
            if (type == 0x23852875)
            {
                body = position + 8;
                return (BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(body)), BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(body + 8)),
                    (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(body + 16)));
            }

            position += 8 + ((length + 7) & ~7);
        }

        throw new InvalidOperationException("the image has no bitmaps extension");
    }

    /// <summary>Rewrites the bitmap count and directory size of the bitmaps extension.</summary>
    public static void PokeBitmapsExtension(string path, uint count, ulong directorySize)
    {
        ReadBitmapsExtension(File.ReadAllBytes(path), out var body);
        var fields = new byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(fields, count);
        BinaryPrimitives.WriteUInt64BigEndian(fields.AsSpan(4), directorySize);
        Poke(path, body, fields[..4]);
        Poke(path, body + 8, fields[4..]);
    }

    /// <summary>Sets flags of the <paramref name="index"/>th bitmap directory entry (entries of a name shorter than 8 bytes are 32 bytes long).</summary>
    public static void PokeBitmapFlags(string path, int index, uint flags)
    {
        var (_, _, directory) = ReadBitmapsExtension(path);
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, flags);
        Poke(path, directory + index * 32 + 12, bytes);
    }

    public static void Poke(string path, long offset, params byte[] bytes)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        stream.Position = offset;
        stream.Write(bytes);
    }

    /// <summary>The host offsets qemu-img map reports for the data of <paramref name="path"/> (depth 0).</summary>
    public static async Task<long[]> DataOffsetsAsync(string path)
    {
        using var map = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", path));
        return [.. map.RootElement.EnumerateArray()
            .Where(e => e.GetProperty("data").GetBoolean() && e.TryGetProperty("offset", out _))
            .Select(e => e.GetProperty("offset").GetInt64())];
    }
}
