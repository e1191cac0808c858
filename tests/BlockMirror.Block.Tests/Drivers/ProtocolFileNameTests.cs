using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// File names with a protocol prefix, read as QEMU 7.2 reads them (bdrv_find_protocol, path_has_protocol):
/// a driver claims its prefixes and turns a name into its options, <c>file:PATH</c> is the file PATH, and a
/// prefix nobody claims is an unknown protocol. A protocol image opened without a format is probed through
/// its own node. Expectations observed with qemu-img 7.2 (<c>qemu-img info NAME</c>).
/// </summary>
public sealed class ProtocolFileNameTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-protocol-names-");

    public void Dispose() => _dir.Dispose();

    /// <summary>
    /// A protocol of this test only: <c>testmem:SIZE</c> is a memory node of SIZE bytes, through the same hook
    /// the NBD client uses for its URIs (offered, as a protocol a name names must be).
    /// </summary>
    static readonly DriverDeclaration TestMemory = new("test-memory-protocol", DriverKind.Protocol, DriverRegistry.Find(DriverNames.Memory)!.Read)
    {
        Protocols = ["testmem"],
        ParseFileName = (name, options) => options.WriteNumber("size",
            long.TryParse(name["testmem:".Length..], out var size) ? size : throw new BlockOpenException("testmem: not a size")),
    };

    static ProtocolFileNameTests() => DriverRegistry.Add(TestMemory);

    [Theory]
    [InlineData("disk.img", null)]
    [InlineData("/images/a:b", null)]
    [InlineData("./a:b", null)]
    [InlineData("dir/a:b", null)]
    [InlineData("nbd://h/x", "nbd")]
    [InlineData("nbd+unix:///x?socket=/s", "nbd+unix")]
    [InlineData("file:disk.img", "file")]
    [InlineData("a:b/c", "a")]
    [InlineData(":x", "")]
    public void A_prefix_is_what_comes_before_a_colon_that_comes_before_any_slash(string name, string? prefix) =>
        Assert.Equal(prefix, DriverRegistry.ProtocolPrefix(name));

    [Theory]
    [InlineData("nbd+vsock://1/x", "Unknown protocol 'nbd+vsock'")]
    [InlineData("foo:bar", "Unknown protocol 'foo'")]
    [InlineData(":x", "Unknown protocol ''")]
    public void A_prefix_no_driver_claims_is_an_unknown_protocol(string name, string message) =>
        Assert.Equal(message, Assert.Throws<BlockOpenException>(() => DriverRegistry.FindProtocol(name)).Message);

    [Fact]
    public void An_unknown_protocol_is_named_by_its_first_127_characters_as_qemu_does()
    {
        var prefix = new string('a', 130);
        Assert.Equal($"Unknown protocol '{prefix[..127]}'", Assert.Throws<BlockOpenException>(() => DriverRegistry.FindProtocol($"{prefix}:x")).Message);
    }

    [Theory]
    [InlineData("disk.img", "disk.img")]
    [InlineData("file:disk.img", "disk.img")]
    [InlineData("file:/images/a:b", "/images/a:b")]
    [InlineData("testmem:4096", null)]
    [InlineData("foo:bar", null)]
    public void The_local_file_of_a_name_is_itself_or_what_follows_file(string name, string? file) =>
        Assert.Equal(file, ImageFiles.LocalFile(name));

    [Fact]
    public async Task File_colon_opens_the_file_after_it()
    {
        var path = _dir.File("a:b.raw");
        await System.IO.File.WriteAllBytesAsync(path, new byte[4096]);
        await using var graph = new BlockGraph();

        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions($"file:{path}", "raw", ReadOnly: true));

        Assert.Equal(path, node.File!.Node.Driver.FileName);
        Assert.Equal(4096, node.Length);
    }

    [Fact]
    public async Task A_name_with_an_unknown_prefix_opens_and_creates_nothing()
    {
        await using var graph = new BlockGraph();

        var open = await Assert.ThrowsAsync<BlockOpenException>(async () => await ImageFiles.OpenAsync(graph, new ImageOpenOptions("foo:bar")));
        var create = Assert.Throws<BlockOpenException>(() => ImageFiles.Create("foo:bar", "raw", 4096));

        Assert.Equal("Unknown protocol 'foo'", open.Message);
        Assert.Equal("Unknown protocol 'foo'", create.Message);
        Assert.Empty(graph.Nodes);
        Assert.False(System.IO.File.Exists("foo:bar"));
    }

    [Fact]
    public void A_protocol_image_is_never_created_as_a_file()
    {
        var refused = Assert.Throws<BlockOpenException>(() => ImageFiles.Create("testmem:4096", "raw", 4096));

        Assert.Equal("Could not create 'testmem:4096': a test-memory-protocol image is opened, never created", refused.Message);
        Assert.False(Directory.Exists("testmem:4096"));
    }

    [Fact]
    public void File_colon_creates_the_file_after_it()
    {
        var path = _dir.File("new.raw");

        ImageFiles.Create($"file:{path}", "raw", 8192);

        Assert.Equal(8192, new FileInfo(path).Length);
    }

    [Fact]
    public async Task A_protocol_image_without_a_format_is_probed_through_its_node_and_goes_with_the_format_node()
    {
        await using var graph = new BlockGraph();

        var image = await ImageFiles.OpenAsync(graph, new ImageOpenOptions("testmem:65536", NodeName: "img"));

        Assert.Equal(DriverNames.Raw, image.Driver.DriverName);
        Assert.Equal(DriverNames.Memory, image.File!.Node.Driver.DriverName);
        Assert.True(image.File.Node.IsAutoNamed);
        Assert.Equal(65536, image.Length);
        // Probed, so guarded: a write that would give it a qcow2 header is refused, as for a probed raw file.
        var header = new byte[512];
        new byte[] { 0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3 }.CopyTo(header, 0);
        var guarded = await Assert.ThrowsAsync<BlockIOException>(async () => await image.WriteAsync(0, header));
        Assert.Equal(BlockErrno.EPERM, guarded.Errno);

        await graph.RemoveNodeAsync(image);
        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task A_name_its_protocol_refuses_is_refused_in_its_words_and_opens_nothing()
    {
        await using var graph = new BlockGraph();

        var refused = await Assert.ThrowsAsync<BlockOpenException>(async () => await ImageFiles.OpenAsync(graph, new ImageOpenOptions("testmem:lots")));

        Assert.Equal("testmem: not a size", refused.Message);
        Assert.Equal("testmem: not a size", Assert.Throws<BlockOpenException>(() => ImageFiles.CheckName("testmem:lots")).Message);
        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task A_protocol_node_whose_format_fails_to_open_is_closed_again()
    {
        await using var graph = new BlockGraph();

        // Zeroes are no qcow2 header.
        await Assert.ThrowsAsync<BlockOpenException>(async () => await ImageFiles.OpenAsync(graph, new ImageOpenOptions("testmem:65536", "qcow2")));
        var protocol = await ImageFiles.OpenProtocolAsync(graph, new ImageOpenOptions("testmem:65536"));
        await Assert.ThrowsAsync<BlockOpenException>(async () => await ImageFiles.OpenOverAsync(graph, new ImageOpenOptions("testmem:65536", "qcow2"), protocol));

        Assert.Empty(graph.Nodes);
    }
}
