using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Tests.Graph;

/// <summary>
/// A node's write threshold (QEMU's block/write-threshold.c and its unit test): the first data-changing request
/// that ends past it reports it once, with how far past, and turns it off; requests that end at or before it,
/// reads, and discards a node does not pass on report nothing.
/// </summary>
public sealed class WriteThresholdTests
{
    const long KiB = 1024;

    static async Task<(BlockGraph Graph, BlockNode Disk, List<WriteThresholdEvent> Events)> OpenAsync()
    {
        var graph = new BlockGraph();
        var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(1024 * KiB));
        var events = new List<WriteThresholdEvent>();
        graph.WriteThresholdExceeded += e =>
        {
            lock (events)
            {
                events.Add(e);
            }
        };
        return (graph, disk, events);
    }

    [Fact]
    public async Task The_first_write_ending_past_the_threshold_reports_it_once_and_turns_it_off()
    {
        var (graph, disk, events) = await OpenAsync();
        await using var _ = graph;
        disk.WriteThreshold = 64 * KiB;

        await disk.WriteAsync(60 * KiB, new byte[4 * KiB]);
        await disk.ReadAsync(0, new byte[128 * KiB]);
        Assert.Empty(events);
        Assert.Equal(64UL * KiB, disk.WriteThreshold);

        await disk.WriteAsync(62 * KiB, new byte[4 * KiB]);
        Assert.Equal([new WriteThresholdEvent("disk", 2 * KiB, 64 * KiB)], events);
        Assert.Equal(0UL, disk.WriteThreshold);

        await disk.WriteAsync(500 * KiB, new byte[4 * KiB]);
        Assert.Single(events);
    }

    [Fact]
    public async Task Write_zeroes_count_and_discards_count_only_where_they_are_passed_on()
    {
        var (graph, disk, events) = await OpenAsync();
        await using var _ = graph;
        disk.WriteThreshold = 100 * KiB;
        await disk.DiscardAsync(200 * KiB, 4 * KiB);
        Assert.Empty(events);

        disk.DiscardUnmaps = true;
        await disk.DiscardAsync(200 * KiB, 4 * KiB);
        Assert.Equal([new WriteThresholdEvent("disk", 104 * KiB, 100 * KiB)], events);

        disk.WriteThreshold = 300 * KiB;
        await disk.WriteZeroesAsync(296 * KiB, 8 * KiB);
        Assert.Equal(new WriteThresholdEvent("disk", 4 * KiB, 300 * KiB), events[^1]);
    }

    [Fact]
    public async Task Concurrent_writers_past_the_threshold_report_it_once()
    {
        var (graph, disk, events) = await OpenAsync();
        await using var _ = graph;
        for (var round = 0; round < 20; round++)
        {
            disk.WriteThreshold = 512 * KiB;
            await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(async () =>
                await disk.WriteAsync((512 + (i * 4)) * KiB, new byte[4 * KiB]))));
            Assert.Equal(round + 1, events.Count);
            Assert.Equal(0UL, disk.WriteThreshold);
        }
    }

    [Fact]
    public async Task A_threshold_of_zero_is_off()
    {
        var (graph, disk, events) = await OpenAsync();
        await using var _ = graph;
        disk.WriteThreshold = 0;
        await disk.WriteAsync(0, new byte[1024 * KiB]);
        Assert.Empty(events);
    }
}
