using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// The driver registry, the one way a node is opened from options: it refuses unknown drivers, unknown
/// members and wrong types with QEMU's words, whichever entry point the options come from (options as
/// blockdev-add takes them, images opened by file name), and an inline child goes away with a parent that
/// fails to open.
/// </summary>
public sealed class DriverRegistryTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-registry-");

    public void Dispose() => _dir.Dispose();

    static async Task<string> RefusalAsync(BlockGraph graph, string json, bool keyval = false, OpenRules? rules = null)
    {
        using var document = JsonDocument.Parse(json);
        var refused = await Assert.ThrowsAsync<BlockOptionException>(async () =>
            await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement, keyval: keyval), rules ?? OpenRules.BlockdevAdd));
        return refused.Message;
    }

    [Theory]
    [InlineData("""{"driver": "nbd", "node-name": "n"}""", "Parameter 'driver' does not accept value 'nbd'")]
    [InlineData("""{"driver": "memory", "node-name": "n", "size": 4096}""", "Parameter 'driver' does not accept value 'memory'")]
    [InlineData("""{"node-name": "n"}""", "Parameter 'driver' is missing")]
    [InlineData("""{"driver": "null-co"}""", "'node-name' must be specified for the root node")]
    [InlineData("""{"driver": "null-co", "node-name": "n", "foo": 1}""", "Parameter 'foo' is unexpected")]
    [InlineData("""{"driver": "null-co", "node-name": "n", "size": "big"}""", "Invalid parameter type for 'size', expected: integer")]
    [InlineData("""{"driver": "null-co", "node-name": "n", "read-zeroes": "yes"}""", "Invalid parameter type for 'read-zeroes', expected: boolean")]
    [InlineData("""{"driver": "file", "node-name": "n"}""", "Parameter 'filename' is missing")]
    [InlineData("""{"driver": "raw", "node-name": "n", "file": "nope"}""", "Cannot find device='nope' nor node-name='nope'")]
    [InlineData("""{"driver": "raw", "node-name": "n", "file": 42}""", "Invalid parameter type for 'file', expected: BlockdevRef")]
    [InlineData("""{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "bogus": 1}}""", "Parameter 'file.bogus' is unexpected")]
    [InlineData("""{"driver": "qcow2", "node-name": "n", "file": {"driver": "null-co"}, "l2-cache-size": "x"}""", "Invalid parameter type for 'l2-cache-size', expected: integer")]
    public async Task Bad_options_are_refused_in_qemus_words(string json, string message)
    {
        await using var graph = new BlockGraph();

        Assert.Equal(message, await RefusalAsync(graph, json));
        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task Blkdebug_declares_the_limits_it_enforces_and_the_node_above_cuts_requests_to_them()
    {
        await using var graph = new BlockGraph();
        using var document = JsonDocument.Parse("""
            {"driver": "blkdebug", "node-name": "dbg", "align": 512, "max-transfer": 4096, "max-write-zero": 8192, "max-discard": 8192,
             "image": {"driver": "null-co", "size": 1048576, "read-zeroes": true}}
            """);
        var node = await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement), OpenRules.BlockdevAdd);
        Assert.Equal(4096, node.Driver.Limits.MaxTransfer);
        Assert.Equal(512, node.Driver.Limits.RequestAlignment);

        // blkdebug fails a request that breaks its limits: these pass only because the node cuts and pads them.
        var edge = graph.AttachRoot(node, new RootParent("test"));
        await edge.ReadAsync(100, new byte[65536]);
        await edge.WriteAsync(3, new byte[20000]);
        await edge.WriteZeroesAsync(1, 100_000);

        Assert.Equal("Parameter 'max-transfer' expects int32", await RefusalAsync(graph, """
            {"driver": "blkdebug", "node-name": "big", "max-transfer": 4294967296, "image": {"driver": "null-co"}}
            """));
    }

    [Theory]
    [InlineData("""{"driver": "null-co", "node-name": "n", "size": "big"}""", "Parameter 'size' expects integer")]
    [InlineData("""{"driver": "null-co", "node-name": "n", "read-zeroes": "maybe"}""", "Parameter 'read-zeroes' expects 'on' or 'off'")]
    public async Task Command_line_values_are_converted_and_refused_in_qemus_words(string json, string message)
    {
        await using var graph = new BlockGraph();

        Assert.Equal(message, await RefusalAsync(graph, json, keyval: true));
    }

    [Fact]
    public async Task Drivers_qemu_lacks_are_open_to_code_only()
    {
        await using var graph = new BlockGraph();
        using var document = JsonDocument.Parse("""{"driver": "memory", "node-name": "m", "size": 65536}""");

        var node = await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement), new OpenRules { InternalDrivers = true });

        Assert.Equal(DriverNames.Memory, node.Driver.DriverName);
        Assert.DoesNotContain(DriverNames.Memory, DriverRegistry.Offered);
        Assert.Equal([DriverNames.Raw, DriverNames.Qcow2], DriverRegistry.Formats);
    }

    [Fact]
    public async Task An_inline_child_goes_away_with_a_parent_that_fails_to_open()
    {
        await using var graph = new BlockGraph();
        using var document = JsonDocument.Parse("""{"driver": "qcow2", "node-name": "q", "file": {"driver": "null-co", "read-zeroes": true}}""");

        await Assert.ThrowsAnyAsync<Exception>(async () => await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement), OpenRules.BlockdevAdd));

        Assert.Empty(graph.Nodes);
    }

    [Fact]
    public async Task Images_opened_by_file_name_are_checked_by_the_same_registry()
    {
        var path = _dir.File("image.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = 1 << 20 });
        await using var graph = new BlockGraph();

        // The same words as blockdev-add's, for the same mistakes.
        var zeroCache = await Assert.ThrowsAsync<BlockOptionException>(async () =>
            await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, DriverNames.Qcow2, Qcow2: new Qcow2Options { L2CacheSize = 0 })));
        Assert.Equal("l2-cache-size must be positive", zeroCache.Message);
        var badName = await Assert.ThrowsAsync<BlockOptionException>(async () =>
            await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, NodeName: "9bad")));
        Assert.Equal("Invalid node-name: '9bad'", badName.Message);
        Assert.Empty(graph.Nodes);

        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, NodeName: "image"));
        Assert.Equal(DriverNames.Qcow2, node.Driver.DriverName);
        Assert.Equal(DriverNames.File, node.File!.Node.Driver.DriverName);
        var again = await Assert.ThrowsAsync<BlockOptionException>(async () =>
            await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, ReadOnly: true, NodeName: "image")));
        Assert.Equal("Duplicate nodes with node-name='image'", again.Message);
    }

    [Fact]
    public async Task An_unknown_image_format_is_refused_before_anything_opens()
    {
        var path = _dir.File("image.raw");
        ImageFiles.Create(path, DriverNames.Raw, 1 << 20);
        await using var graph = new BlockGraph();

        var refused = await Assert.ThrowsAsync<BlockOpenException>(async () => await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "nbd")));

        Assert.Equal($"Unknown image format 'nbd' for '{path}' (supported: raw, qcow2)", refused.Message);
        Assert.Empty(graph.Nodes);
    }
}
