using System.Text.Json.Nodes;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Commands;

/// <summary>query-blockstats (BlockStats and BlockDeviceStats in QEMU 7.2's qapi/block-core.json).</summary>
/// <remarks>
/// <para>QEMU accounts requests on BlockBackends, the devices' view of a disk: with <c>query-nodes</c> it lists
/// every named node with zeros but for <c>wr_highest_offset</c>, and without it the backends that have a name
/// or a device, of which a storage daemon has none, so the list is empty. We answer the same way without
/// <c>query-nodes</c>, and with it report what each node counted (<see cref="NodeStatistics"/>): the reason
/// for asking a storage daemon at all.</para>
/// <para>Write-zeroes requests count as writes (rd/wr/flush/unmap are QEMU's only kinds, and a device's WRITE
/// SAME is accounted as a write). Requests are never merged, so <c>*_merged</c> stay 0; <c>timed_stats</c>
/// is empty, as in QEMU when no <c>stats-intervals</c> were given, which only a device can take.</para>
/// </remarks>
public sealed partial class StorageDaemon
{
    void AddStatsCommands()
    {
        Commands.Add("query-blockstats", new QapiObject("q_obj_query-blockstats-arg", ("*query-nodes", QapiBuiltin.Bool)),
            new QapiArray(BlockStats), (arguments, _) =>
        {
            var queryNodes = arguments.OptionalBool("query-nodes") ?? false;
            arguments.CheckNoneUnexpected();
            var list = new JsonArray();
            if (queryNodes)
            {
                foreach (var node in Graph.Nodes)
                {
                    list.Add((JsonNode)DescribeStats(node));
                }
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });
    }

    static readonly QapiArray IntList = new(QapiBuiltin.Int);

    /// <summary>BlockLatencyHistogramInfo: never filled here (no device can ask for histograms), declared as QEMU does.</summary>
    static readonly QapiObject BlockLatencyHistogramInfo = new("BlockLatencyHistogramInfo", ("boundaries", IntList), ("bins", IntList));

    /// <summary>BlockDeviceTimedStats: the list stays empty (only a device takes <c>stats-intervals</c>), declared as QEMU does.</summary>
    static readonly QapiObject BlockDeviceTimedStats = new("BlockDeviceTimedStats",
        ("interval_length", QapiBuiltin.Int), ("min_rd_latency_ns", QapiBuiltin.Int), ("max_rd_latency_ns", QapiBuiltin.Int),
        ("avg_rd_latency_ns", QapiBuiltin.Int), ("min_wr_latency_ns", QapiBuiltin.Int), ("max_wr_latency_ns", QapiBuiltin.Int),
        ("avg_wr_latency_ns", QapiBuiltin.Int), ("min_flush_latency_ns", QapiBuiltin.Int), ("max_flush_latency_ns", QapiBuiltin.Int),
        ("avg_flush_latency_ns", QapiBuiltin.Int), ("avg_rd_queue_depth", QapiBuiltin.Number), ("avg_wr_queue_depth", QapiBuiltin.Number));

    /// <summary>BlockDeviceStats, as <see cref="DeviceStats"/> fills it in.</summary>
    static readonly QapiObject BlockDeviceStats = new("BlockDeviceStats",
        ("rd_bytes", QapiBuiltin.Int), ("wr_bytes", QapiBuiltin.Int), ("unmap_bytes", QapiBuiltin.Int), ("rd_operations", QapiBuiltin.Int),
        ("wr_operations", QapiBuiltin.Int), ("flush_operations", QapiBuiltin.Int), ("unmap_operations", QapiBuiltin.Int),
        ("rd_total_time_ns", QapiBuiltin.Int), ("wr_total_time_ns", QapiBuiltin.Int), ("flush_total_time_ns", QapiBuiltin.Int),
        ("unmap_total_time_ns", QapiBuiltin.Int), ("wr_highest_offset", QapiBuiltin.Int), ("rd_merged", QapiBuiltin.Int), ("wr_merged", QapiBuiltin.Int),
        ("unmap_merged", QapiBuiltin.Int), ("*idle_time_ns", QapiBuiltin.Int), ("failed_rd_operations", QapiBuiltin.Int),
        ("failed_wr_operations", QapiBuiltin.Int), ("failed_flush_operations", QapiBuiltin.Int),
        ("failed_unmap_operations", QapiBuiltin.Int), ("invalid_rd_operations", QapiBuiltin.Int), ("invalid_wr_operations", QapiBuiltin.Int),
        ("invalid_flush_operations", QapiBuiltin.Int), ("invalid_unmap_operations", QapiBuiltin.Int),
        ("account_invalid", QapiBuiltin.Bool), ("account_failed", QapiBuiltin.Bool), ("timed_stats", new QapiArray(BlockDeviceTimedStats)),
        ("*rd_latency_histogram", BlockLatencyHistogramInfo), ("*wr_latency_histogram", BlockLatencyHistogramInfo),
        ("*flush_latency_histogram", BlockLatencyHistogramInfo));

    /// <summary>
    /// BlockStatsSpecific: a union on the driver whose only variant here is the file driver's
    /// (QEMU's host_device and nvme variants are drivers this daemon does not have).
    /// </summary>
    static readonly QapiObject BlockStatsSpecific = QapiObject.Union("BlockStatsSpecific", [("driver", BlockdevSchema.Driver)], "driver",
        new QapiVariant(DriverNames.File, new QapiObject("BlockStatsSpecificFile",
            ("discard-nb-ok", QapiBuiltin.Int), ("discard-nb-failed", QapiBuiltin.Int), ("discard-bytes-ok", QapiBuiltin.Int))));

    /// <summary>BlockStats, which contains itself: a node's <c>parent</c> (and a device's <c>backing</c>) are BlockStats.</summary>
    static readonly QapiObject BlockStats = QapiObject.Recursive("BlockStats", self =>
        [("*device", QapiBuiltin.Str), ("*qdev", QapiBuiltin.Str), ("*node-name", QapiBuiltin.Str), ("stats", BlockDeviceStats),
         ("*driver-specific", BlockStatsSpecific), ("*parent", self), ("*backing", self)]);

    /// <summary>A node's BlockStats: its own counts, and those of the child that holds its data as <c>parent</c>.</summary>
    static JsonObject DescribeStats(BlockNode node)
    {
        var stats = new JsonObject
        {
            ["node-name"] = node.Name,
            ["stats"] = DeviceStats(node.Statistics),
        };
        if (node.Driver.DriverName == DriverNames.File)
        {
            // QEMU's file driver counts the discards that reached the file (BlockStatsSpecificFile).
            var s = node.Statistics;
            stats["driver-specific"] = new JsonObject
            {
                ["driver"] = DriverNames.File,
                ["discard-nb-ok"] = s.Operations(BlockOperation.Discard),
                ["discard-nb-failed"] = s.Failed(BlockOperation.Discard),
                ["discard-bytes-ok"] = s.Bytes(BlockOperation.Discard),
            };
        }

        // QEMU's node-level answer nests the primary data child only; "backing" is for the device level.
        if (node.PrimaryChild is { } child)
        {
            stats["parent"] = DescribeStats(child.Node);
        }

        return stats;
    }

    static JsonObject DeviceStats(NodeStatistics s)
    {
        static long Writes(Func<BlockOperation, long> read) => read(BlockOperation.Write) + read(BlockOperation.WriteZeroes);

        var stats = new JsonObject
        {
            ["rd_bytes"] = s.Bytes(BlockOperation.Read),
            ["wr_bytes"] = Writes(s.Bytes),
            ["unmap_bytes"] = s.Bytes(BlockOperation.Discard),
            ["rd_operations"] = s.Operations(BlockOperation.Read),
            ["wr_operations"] = Writes(s.Operations),
            ["flush_operations"] = s.Operations(BlockOperation.Flush),
            ["unmap_operations"] = s.Operations(BlockOperation.Discard),
            ["rd_total_time_ns"] = s.TotalTimeNs(BlockOperation.Read),
            ["wr_total_time_ns"] = Writes(s.TotalTimeNs),
            ["flush_total_time_ns"] = s.TotalTimeNs(BlockOperation.Flush),
            ["unmap_total_time_ns"] = s.TotalTimeNs(BlockOperation.Discard),
            ["wr_highest_offset"] = s.WriteHighestOffset,
            ["rd_merged"] = 0,
            ["wr_merged"] = 0,
            ["unmap_merged"] = 0,
            ["failed_rd_operations"] = s.Failed(BlockOperation.Read),
            ["failed_wr_operations"] = Writes(s.Failed),
            ["failed_flush_operations"] = s.Failed(BlockOperation.Flush),
            ["failed_unmap_operations"] = s.Failed(BlockOperation.Discard),
            ["invalid_rd_operations"] = s.Invalid(BlockOperation.Read),
            ["invalid_wr_operations"] = Writes(s.Invalid),
            ["invalid_flush_operations"] = s.Invalid(BlockOperation.Flush),
            ["invalid_unmap_operations"] = s.Invalid(BlockOperation.Discard),
            // Both kinds are always counted (QEMU: per device, on by default; false where nothing counts).
            ["account_invalid"] = true,
            ["account_failed"] = true,
            ["timed_stats"] = new JsonArray(),
        };
        if (s.IdleTime is { } idle)
        {
            // Present once a request was accounted, as in QEMU.
            stats["idle_time_ns"] = (long)(idle.Ticks * (1_000_000_000 / TimeSpan.TicksPerSecond));
        }

        return stats;
    }
}
