using System.Buffers.Binary;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// Format probing and QEMU's guard on a raw image whose format was probed: whatever the request's shape
/// (whole block, part of it, vectored, zeroes), a result that would announce an image format in the first
/// 512 bytes is refused with EPERM and leaves the image as it was; everything else passes.
/// </summary>
public sealed class RawProbeGuardTests : IDisposable
{
    const int Size = 1 << 20;

    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>The first bytes of an image of each format QEMU probes, and what the probe must call it.</summary>
    public static TheoryData<string, byte[]> Headers => new()
    {
        { "qcow2", Qcow2Start(3) },
        { "qcow", Qcow2Start(1) },
        { "qed", "QED\0"u8.ToArray() },
        { "vmdk", "KDMV"u8.ToArray() },
        { "vmdk", "# Disk DescriptorFile\n"u8.ToArray() },
        { "vpc", "conectix"u8.ToArray() },
        { "vhdx", "vhdxfile"u8.ToArray() },
        { "luks", [(byte)'L', (byte)'U', (byte)'K', (byte)'S', 0xba, 0xbe, 0, 1] },
        { "parallels", "WithoutFreeSpace"u8.ToArray() },
        { "vdi", [.. new byte[64], 0x7f, 0x10, 0xda, 0xbe] },
    };

    static byte[] Qcow2Start(uint version)
    {
        var start = new byte[8];
        BinaryPrimitives.WriteUInt32BigEndian(start, 0x514649fb);
        BinaryPrimitives.WriteUInt32BigEndian(start.AsSpan(4), version);
        return start;
    }

    [Theory]
    [MemberData(nameof(Headers))]
    public void The_probe_names_every_format_QEMU_recognises(string format, byte[] header)
    {
        var block = new byte[512];
        header.CopyTo(block, 0);
        Assert.Equal(format, ImageFormatProbe.Detect(block));
        Assert.Equal("raw", ImageFormatProbe.Detect(new byte[512]));
        Assert.Equal("raw", ImageFormatProbe.Detect(header.AsSpan(0, 3)));
    }

    [Fact]
    public async Task Opening_without_a_format_probes_the_content_not_the_name()
    {
        var path = _dir.File("disk.img");
        await using (var graph = new BlockGraph())
        {
            ImageFiles.Create(path, "qcow2", Size);
        }

        await using var reopened = new BlockGraph();
        var node = await ImageFiles.OpenAsync(reopened, new ImageOpenOptions(path, ReadOnly: true));
        Assert.Equal("qcow2", node.Driver.DriverName);
    }

    [Fact]
    public async Task A_file_in_another_format_is_refused_at_open_with_its_name()
    {
        var path = _dir.File("disk.vmdk");
        var content = new byte[Size];
        "KDMV"u8.CopyTo(content);
        File.WriteAllBytes(path, content);

        await using var graph = new BlockGraph();
        var error = await Assert.ThrowsAsync<BlockOpenException>(async () => await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path)));
        Assert.Contains("is a vmdk image", error.Message, StringComparison.Ordinal);
        Assert.Empty(graph.Nodes);
    }

    /// <summary>How a request can put a header into the first block: each must be refused on a probed raw image.</summary>
    public static TheoryData<string> Shapes => ["whole block", "part of the block", "vectored", "header split over two writes"];

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task A_write_that_would_make_a_probed_raw_image_a_qcow2_fails_with_EPERM_and_changes_nothing(string shape)
    {
        var (path, original) = MakeRawImage();
        await using var graph = new BlockGraph();
        var disk = graph.AttachRoot(await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path)), new RootParent("test"));
        var header = Qcow2Start(3);
        var block = new byte[4096];
        header.CopyTo(block, 0);

        var error = await Assert.ThrowsAsync<BlockIOException>(async () =>
        {
            switch (shape)
            {
                case "whole block":
                    await disk.WriteAsync(0, block);
                    break;
                case "part of the block":
                    await disk.WriteAsync(0, header);
                    break;
                case "vectored":
                    await disk.WriteVectorAsync(0, [header.AsMemory(0, 3), header.AsMemory(3), new byte[600]]);
                    break;
                default:
                    // The first half alone is harmless; the second completes the magic over it.
                    await disk.WriteAsync(0, header.AsMemory(0, 2));
                    await disk.WriteAsync(2, header.AsMemory(2));
                    break;
            }
        });

        Assert.Equal(BlockErrno.EPERM, error.Errno);
        var now = File.ReadAllBytes(path);
        if (shape == "header split over two writes")
        {
            header.AsSpan(0, 2).CopyTo(original);
        }

        Assert.Equal(original, now);
    }

    [Fact]
    public async Task Ordinary_writes_to_a_probed_raw_image_pass_and_an_explicit_raw_format_lifts_the_guard()
    {
        var (path, original) = MakeRawImage();
        var data = new byte[8192];
        new Random(3).NextBytes(data);
        data[0] = 0;
        await using (var graph = new BlockGraph())
        {
            var disk = graph.AttachRoot(await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path)), new RootParent("test"));
            await disk.WriteAsync(0, data);
            await disk.WriteZeroesAsync(100, 50);
            await disk.DiscardAsync(200, 10);
        }

        data.CopyTo(original, 0);
        original.AsSpan(100, 50).Clear();
        original.AsSpan(200, 10).Clear();
        Assert.Equal(original, File.ReadAllBytes(path));

        await using (var graph = new BlockGraph())
        {
            var disk = graph.AttachRoot(await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, Format: "raw")), new RootParent("test"));
            await disk.WriteAsync(0, Qcow2Start(3));
        }

        Assert.Equal("qcow2", ImageFiles.Probe(path));
    }

    [Fact]
    public async Task Zeroing_that_would_complete_a_magic_is_refused_too()
    {
        // "QED" followed by a byte that zeroing turns into QED's NUL: the image probes as raw until then.
        var (path, original) = MakeRawImage();
        "QEDx"u8.CopyTo(original);
        File.WriteAllBytes(path, original);
        await using var graph = new BlockGraph();
        var disk = graph.AttachRoot(await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path)), new RootParent("test"));

        var error = await Assert.ThrowsAsync<BlockIOException>(async () => await disk.WriteZeroesAsync(3, 1));
        Assert.Equal(BlockErrno.EPERM, error.Errno);
        Assert.Equal(original, File.ReadAllBytes(path));
    }

    [Fact]
    public async Task The_graph_finds_the_node_that_has_a_file_open_by_any_name()
    {
        var (path, _) = MakeRawImage();
        var link = _dir.File("link.img");
        File.CreateSymbolicLink(link, path);
        await using var graph = new BlockGraph();
        Assert.Null(graph.FindNodeUsingFile(path));

        await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, ReadOnly: true));
        Assert.NotNull(graph.FindNodeUsingFile(path));
        Assert.NotNull(graph.FindNodeUsingFile(link));
        Assert.Null(graph.FindNodeUsingFile(_dir.File("other.img")));
    }

    (string Path, byte[] Original) MakeRawImage()
    {
        var path = _dir.File($"raw-{Guid.NewGuid():N}.img");
        var original = new byte[Size];
        new Random(1).NextBytes(original);
        original[0] = 0;
        File.WriteAllBytes(path, original);
        return (path, original);
    }
}
