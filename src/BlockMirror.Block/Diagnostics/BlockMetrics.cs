using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Diagnostics;

/// <summary>
/// The process's <see cref="Meter"/> ("BlockMirror", shared by every BlockMirror library) and the block
/// layer's instruments on it: per node and kind of request, the requests, bytes, failed and invalid requests
/// (observable counters that read <see cref="NodeStatistics"/> when a listener collects, so the request path
/// adds nothing for them), and the time requests take (a histogram, recorded only while a listener has it
/// enabled). Tags: <c>node</c> (the node name) and <c>op</c> (read, write, write-zeroes, discard, flush).
/// </summary>
public static class BlockMetrics
{
    public const string MeterName = "BlockMirror";

    /// <summary>The one meter of the BlockMirror libraries; the NBD server and the jobs add their instruments to it.</summary>
    public static Meter Meter { get; } = new(MeterName, typeof(BlockMetrics).Assembly.GetName().Version?.ToString());

    /// <summary>The name of <see cref="RequestDuration"/>.</summary>
    public const string RequestDurationName = "blockmirror.node.request.duration";

    /// <summary>Seconds a request took on a node, from its acceptance to its end, failed ones included.</summary>
    internal static Histogram<double> RequestDuration { get; } = Meter.CreateHistogram(
        RequestDurationName, "s", "Time requests took on a node, by node and operation", tags: null,
        // Storage latencies, 10 µs (page cache, memory) to 10 s (a stalled remote); exporters that follow the
        // advice (OpenTelemetry) use these instead of their defaults, which are made for milliseconds.
        advice: new InstrumentAdvice<double>
        {
            HistogramBucketBoundaries = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        });

    // Every live graph, weakly: a graph nobody holds any more is measured no more.
    static readonly ConditionalWeakTable<BlockGraph, object> Graphs = new();

    static readonly string[] OperationNames =
        [.. Enumerable.Range(0, NodeStatistics.Kinds).Select(i => ((BlockOperation)i).ToWireName())];

    static BlockMetrics()
    {
        Meter.CreateObservableCounter("blockmirror.node.requests", () => Observe(static (s, k) => s.Operations(k)),
            "{request}", "Requests that completed on a node, by node and operation");
        Meter.CreateObservableCounter("blockmirror.node.bytes", () => Observe(static (s, k) => s.Bytes(k)),
            "By", "Bytes read, written, zeroed or discarded by requests that completed on a node");
        Meter.CreateObservableCounter("blockmirror.node.requests.failed", () => Observe(static (s, k) => s.Failed(k)),
            "{request}", "Requests that failed on a node after it accepted them");
        Meter.CreateObservableCounter("blockmirror.node.requests.invalid", () => Observe(static (s, k) => s.Invalid(k)),
            "{request}", "Requests a node refused (out of range, read-only)");
    }

    /// <summary>The tag value for a kind of request.</summary>
    internal static string OperationName(BlockOperation kind) => OperationNames[(int)kind];

    /// <summary>Measures the graph's nodes from now on, for as long as the graph lives.</summary>
    internal static void Track(BlockGraph graph) => Graphs.AddOrUpdate(graph, graph);

    static IEnumerable<Measurement<long>> Observe(Func<NodeStatistics, BlockOperation, long> read)
    {
        foreach (var (graph, _) in Graphs)
        {
            foreach (var node in graph.Nodes)
            {
                for (var kind = 0; kind < NodeStatistics.Kinds; kind++)
                {
                    yield return new Measurement<long>(read(node.Statistics, (BlockOperation)kind),
                        new KeyValuePair<string, object?>("node", node.Name), new KeyValuePair<string, object?>("op", OperationNames[kind]));
                }
            }
        }
    }
}
