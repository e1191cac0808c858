using System.Diagnostics.Metrics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BlockMirror.Block.Diagnostics;
using BlockMirror.Block.Drivers.Null;
using BlockMirror.Block.Graph;

namespace BlockMirror.Benchmarks;

/// <summary>
/// What the per-node statistics and the metrics cost a request: 4 KiB writes and reads through a root edge
/// to a null-co node (no storage, so the request path is all there is), with no listener on the BlockMirror
/// meter (the statistics' interlocked adds only) and with one that enables every instrument (the duration
/// histogram is then recorded per request). Allocations are shown: there must be none per request.
/// </summary>
[Config(typeof(Config))]
[MemoryDiagnoser]
public class NodeStatisticsBenchmarks
{
    const int Block = 4096;

    sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.ShortRun);
        }
    }

    readonly byte[] _buffer = GC.AllocateArray<byte>(Block, pinned: true);
    BlockGraph? _graph;
    NodeEdge? _edge;
    MeterListener? _listener;

    [Params(false, true)]
    public bool Listened { get; set; }

    [GlobalSetup]
    public async Task SetupAsync()
    {
        _graph = new BlockGraph();
        var node = await NullDriver.OpenAsync(_graph, "null0", new NullDriverOptions(1L << 30));
        _edge = _graph.AttachRoot(node, new RootParent("bench"));
        if (Listened)
        {
            _listener = new MeterListener
            {
                InstrumentPublished = (instrument, listener) =>
                {
                    if (instrument.Meter.Name == BlockMetrics.MeterName)
                    {
                        listener.EnableMeasurementEvents(instrument);
                    }
                },
            };
            // An aggregator's cost is the exporter's; a callback that does nothing isolates ours.
            _listener.SetMeasurementEventCallback<double>(static (_, _, _, _) => { });
            _listener.Start();
        }
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        _listener?.Dispose();
        await _graph!.DisposeAsync();
    }

    [Benchmark]
    public ValueTask Write4K() => _edge!.WriteAsync(0, _buffer);

    [Benchmark]
    public ValueTask Read4K() => _edge!.ReadAsync(0, _buffer);
}
