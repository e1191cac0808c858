using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>The memory driver against a byte array, with and without zero-initialised pages.</summary>
public sealed class MemoryDriverModelTests
{
    const int Page = 64 * 1024;

    // 18 pages, the last one partial, so requests cross page boundaries and reach a short last page.
    const long Size = 17 * Page + 4321;

    static async Task<(BlockGraph Graph, NodeEdge Disk)> OpenAsync(bool zeroInit)
    {
        var graph = new BlockGraph();
        var node = await MemoryDriver.OpenAsync(graph, "mem", new MemoryDriverOptions(Size, zeroInit));
        return (graph, graph.AttachRoot(node, new RootParent("test")));
    }

    static ModelProfile Profile(bool zeroInit) => new()
    {
        Size = Size,
        InitialByte = zeroInit ? (byte)0 : MemoryDriver.GarbageByte,
        Granularity = Page,

        // Write-zeroes and discard replace whole pages by the shared zero page, whatever the flags.
        WriteZeroesStatus = ZeroedStatus.AlwaysZero,
        DiscardReportsZero = true,
        StartsZero = zeroInit,
        NeverWrittenIsData = !zeroInit,
    };

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public Task Random_requests_match_the_model(bool zeroInit) =>
        Seeds.RunAsync(Seeds.Range(8), async seed =>
        {
            var (graph, disk) = await OpenAsync(zeroInit);
            await using var _ = graph;
            using var runner = new ModelRunner(disk, Profile(zeroInit), seed);
            await runner.RunAsync(steps: 600, checkEvery: 50);
            Assert.True(runner.Writes > 0 && runner.WriteZeroes > 0 && runner.Discards > 0 && runner.StatusQueries > 0);
        });

    [Fact]
    public async Task Without_zero_init_never_written_bytes_read_garbage_and_are_reported_as_data()
    {
        var (graph, disk) = await OpenAsync(zeroInit: false);
        await using var _ = graph;
        await disk.WriteAsync(Page + 100, new byte[] { 1, 2, 3 });

        var buffer = new byte[2 * Page];
        await disk.ReadAsync(0, buffer);
        Assert.All(buffer[..(Page + 100)], b => Assert.Equal(MemoryDriver.GarbageByte, b));
        Assert.Equal(new byte[] { 1, 2, 3 }, buffer[(Page + 100)..(Page + 103)]);
        Assert.All(buffer[(Page + 103)..], b => Assert.Equal(MemoryDriver.GarbageByte, b));

        var status = await disk.GetBlockStatusAsync(0, Size);
        Assert.Equal(BlockStatusFlags.Data | BlockStatusFlags.Allocated, status.Flags);
        Assert.Equal(Size, status.Length);
        Assert.False(disk.Node.Capabilities.ZeroInit);
    }

    [Fact]
    public async Task Zeroing_whole_pages_reports_them_zero_and_a_partial_page_keeps_its_other_bytes()
    {
        var (graph, disk) = await OpenAsync(zeroInit: false);
        await using var _ = graph;
        await disk.WriteZeroesAsync(Page, 2 * Page + 10);

        Assert.Equal(new BlockStatus(BlockStatusFlags.Data | BlockStatusFlags.Allocated, Page), await disk.GetBlockStatusAsync(0, Size));
        Assert.Equal(new BlockStatus(BlockStatusFlags.Zero | BlockStatusFlags.Allocated, 2 * Page), await disk.GetBlockStatusAsync(Page, Size - Page));
        Assert.True((await disk.GetBlockStatusAsync(3 * Page, Size - 3 * Page)).IsData);

        var tail = new byte[Page];
        await disk.ReadAsync(3 * Page, tail);
        Assert.All(tail[..10], b => Assert.Equal(0, b));
        Assert.All(tail[10..], b => Assert.Equal(MemoryDriver.GarbageByte, b));
    }
}
