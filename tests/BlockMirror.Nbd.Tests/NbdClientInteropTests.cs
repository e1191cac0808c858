using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>Our NBD server against the real clients: qemu-io, qemu-img, nbdinfo, nbdcopy.</summary>
public sealed class NbdClientInteropTests
{
    const long Size = 8 << 20;

    [SkippableFact]
    public async Task Qemu_io_writes_patterns_and_reads_them_back()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);

        var output = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw",
            "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xa5 1M 4k", "-c", "write -z 2M 1M",
            "-c", "discard 3M 64k", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0xa5 1M 4k", "-c", "read -P 0 2M 1M", "-c", "flush",
            nbd.Uri);

        Assert.DoesNotContain("Pattern verification failed", output, StringComparison.Ordinal);
        var bytes = await File.ReadAllBytesAsync(nbd.ImagePath);
        Assert.True(bytes.AsSpan(0, 65536).IndexOfAnyExcept((byte)0x5a) < 0);
        Assert.True(bytes.AsSpan(1 << 20, 4096).IndexOfAnyExcept((byte)0xa5) < 0);
        Assert.Equal(65536 + 4096, bytes.Count(b => b != 0));
    }

    [SkippableFact]
    public async Task Qemu_img_compare_finds_the_export_identical_to_its_file()
    {
        var content = new byte[Size];
        new Random(7).NextBytes(content.AsSpan(0, 3 << 20));
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);

        var output = await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", nbd.Uri, nbd.ImagePath);

        Assert.Contains("Images are identical.", output, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task Nbdinfo_lists_the_export_and_maps_data_and_holes()
    {
        var content = new byte[1 << 20];
        Array.Fill(content, (byte)1);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);

        var list = await ExternalTool.RunCheckedAsync("nbdinfo", "--list", "--json", $"nbd://127.0.0.1:{nbd.Port}");
        using var listed = JsonDocument.Parse(list);
        var export = Assert.Single(listed.RootElement.GetProperty("exports").EnumerateArray());
        Assert.Equal(NbdFixture.ExportName, export.GetProperty("export-name").GetString());
        Assert.Equal(Size, export.GetProperty("export-size").GetInt64());
        Assert.True(export.GetProperty("is_read_only").GetBoolean());
        Assert.Contains("base:allocation", export.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()));

        var map = await ExternalTool.RunCheckedAsync("nbdinfo", "--map", "--json", nbd.Uri);
        using var extents = JsonDocument.Parse(map);
        var entries = extents.RootElement.EnumerateArray().Select(e => (Offset: e.GetProperty("offset").GetInt64(),
            Length: e.GetProperty("length").GetInt64(), Type: e.GetProperty("type").GetInt32())).ToList();
        Assert.Equal((0L, 1L << 20, 0), entries[0]);
        Assert.Equal(Size, entries.Sum(e => e.Length));
        Assert.All(entries.Skip(1), e => Assert.Equal(3, e.Type));
    }

    [SkippableFact]
    public async Task Qemu_io_nbdcopy_and_qemu_img_compare_read_a_sparse_export_through_hole_chunks()
    {
        // Data between holes: the clients negotiate structured replies and read without "don't fragment", so the
        // holes reach them as hole chunks (NbdSparseReadTests shows the chunks).
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false);
        var content = new byte[Size];
        using (var file = File.OpenHandle(nbd.ImagePath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            foreach (var (offset, value) in new[] { (0, (byte)0x5a), (1 << 20, (byte)0xa5), ((5 << 20) + 4096, (byte)0x33) })
            {
                content.AsSpan(offset, 64 << 10).Fill(value);
                RandomAccess.Write(file, content.AsSpan(offset, 64 << 10), offset);
            }
        }

        var output = await ExternalTool.RunCheckedAsync("qemu-io", "-r", "-f", "raw",
            "-c", "read -P 0x5a 0 64k", "-c", "read -P 0 64k 960k", "-c", "read -P 0xa5 1M 64k", "-c", "read -P 0 4M 1M",
            "-c", "read -P 0x33 5124k 64k", "-c", "read -P 0 5188k 2940k", nbd.Uri);
        Assert.DoesNotContain("Pattern verification failed", output, StringComparison.Ordinal);

        var back = nbd.Directory.File("back.raw");
        await ExternalTool.RunCheckedAsync("nbdcopy", nbd.Uri, back);
        Assert.Equal(content, await File.ReadAllBytesAsync(back));

        var compare = await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", nbd.Uri, back);
        Assert.Contains("Images are identical.", compare, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task Nbdcopy_copies_to_and_from_the_export()
    {
        var content = new byte[Size];
        new Random(11).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size);
        var source = nbd.Directory.File("source.raw");
        await File.WriteAllBytesAsync(source, content);
        var back = nbd.Directory.File("back.raw");

        await ExternalTool.RunCheckedAsync("nbdcopy", source, nbd.Uri);
        await ExternalTool.RunCheckedAsync("nbdcopy", nbd.Uri, back);

        Assert.Equal(content, await File.ReadAllBytesAsync(nbd.ImagePath));
        Assert.Equal(content, await File.ReadAllBytesAsync(back));
    }

    [SkippableFact]
    public async Task A_read_only_export_is_advertised_read_only_so_qemu_io_cannot_open_it_for_writing()
    {
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false);

        var result = await ExternalTool.RunAsync("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4k", nbd.Uri]);

        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("can't open device", result.StandardOutput + result.StandardError, StringComparison.Ordinal);
        Assert.True((await File.ReadAllBytesAsync(nbd.ImagePath)).AsSpan().IndexOfAnyExcept((byte)0) < 0);
    }

    [SkippableFact]
    public async Task Fio_random_writes_at_depth_16_verify()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);

        var output = await ExternalTool.RunCheckedAsync("fio", "--name=nbd", "--ioengine=nbd", $"--uri={nbd.Uri}",
            "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=4M", "--verify=crc32c", "--do_verify=1", "--randseed=5",
            "--output-format=json");

        using var report = System.Text.Json.JsonDocument.Parse(output[output.IndexOf('{', StringComparison.Ordinal)..]);
        var job = report.RootElement.GetProperty("jobs")[0];
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        Assert.Equal(4L << 20, job.GetProperty("write").GetProperty("io_bytes").GetInt64());
        Assert.Equal(4L << 20, job.GetProperty("read").GetProperty("io_bytes").GetInt64());
    }
}
