using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using BlockMirror.Block.Diagnostics;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Tests.Diagnostics;

/// <summary>
/// The block layer's instruments as any listener (dotnet-counters, OpenTelemetry) sees them: a MeterListener
/// on the "BlockMirror" meter collects the per-node counters and the request-duration histogram.
/// </summary>
public sealed class BlockMetricsTests
{
    const int Block = 4096;

    /// <summary>The meter is process-wide and tests run side by side: each test measures its own node names.</summary>
    static string UniqueName(string prefix) => $"{prefix}{Guid.NewGuid():N}"[..20];

    sealed class Recorder : IDisposable
    {
        readonly MeterListener _listener = new();

        public Recorder(params string[] instruments)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == BlockMetrics.MeterName && instruments.Contains(instrument.Name))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((i, value, tags, _) => Add(i.Name, value, tags));
            _listener.SetMeasurementEventCallback<double>((i, value, tags, _) => Add(i.Name, value, tags));
            _listener.Start();
        }

        public ConcurrentQueue<(string Instrument, double Value, Dictionary<string, object?> Tags)> Measurements { get; } = new();

        void Add(string instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var copy = new Dictionary<string, object?>();
            foreach (var tag in tags)
            {
                copy[tag.Key] = tag.Value;
            }

            Measurements.Enqueue((instrument, value, copy));
        }

        public void Collect() => _listener.RecordObservableInstruments();

        public List<double> Of(string instrument, string node, string op) =>
            [.. Measurements.Where(m => m.Instrument == instrument && Equals(m.Tags.GetValueOrDefault("node"), node) && Equals(m.Tags.GetValueOrDefault("op"), op)).Select(m => m.Value)];

        public void Dispose() => _listener.Dispose();
    }

    [Fact]
    public async Task A_listener_sees_the_requests_and_bytes_each_node_counted()
    {
        using var recorder = new Recorder("blockmirror.node.requests", "blockmirror.node.bytes", "blockmirror.node.requests.failed");
        await using var graph = new BlockGraph();
        var name = UniqueName("m");
        var node = await MemoryDriver.OpenAsync(graph, name, new MemoryDriverOptions(64 * Block));
        var disk = graph.AttachRoot(node, new RootParent("test"));
        await disk.WriteAsync(0, new byte[3 * Block]);
        await disk.WriteAsync(4 * Block, new byte[Block]);
        await disk.WriteZeroesAsync(8 * Block, 2 * Block);
        await disk.ReadAsync(0, new byte[Block]);

        recorder.Collect();

        Assert.Equal([2], recorder.Of("blockmirror.node.requests", name, "write"));
        Assert.Equal([4.0 * Block], recorder.Of("blockmirror.node.bytes", name, "write"));
        Assert.Equal([1], recorder.Of("blockmirror.node.requests", name, "write-zeroes"));
        Assert.Equal([2.0 * Block], recorder.Of("blockmirror.node.bytes", name, "write-zeroes"));
        Assert.Equal([1], recorder.Of("blockmirror.node.requests", name, "read"));
        Assert.Equal([0], recorder.Of("blockmirror.node.requests", name, "flush"));
        Assert.Equal([0], recorder.Of("blockmirror.node.requests.failed", name, "write"));
    }

    [Fact]
    public async Task The_duration_histogram_records_each_request_only_while_a_listener_has_it_on()
    {
        await using var graph = new BlockGraph();
        var name = UniqueName("h");
        var node = await MemoryDriver.OpenAsync(graph, name, new MemoryDriverOptions(64 * Block));
        var disk = graph.AttachRoot(node, new RootParent("test"));
        await disk.WriteAsync(0, new byte[Block]);

        using (var recorder = new Recorder("blockmirror.node.request.duration"))
        {
            await disk.WriteAsync(0, new byte[Block]);
            await disk.WriteAsync(Block, new byte[Block]);
            await disk.FlushAsync();

            var writes = recorder.Of("blockmirror.node.request.duration", name, "write");
            Assert.Equal(2, writes.Count);
            Assert.All(writes, seconds => Assert.True(seconds >= 0));
            Assert.Single(recorder.Of("blockmirror.node.request.duration", name, "flush"));
        }

        // Three writes in all, but only the two made while listened to were recorded; all three are counted.
        Assert.Equal(3, node.Statistics.Operations(Io.BlockOperation.Write));
    }
}
