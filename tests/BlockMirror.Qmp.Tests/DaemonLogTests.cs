using System.Text.Json.Nodes;
using BlockMirror.Jobs;
using BlockMirror.TestKit;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// What the daemon's graph and jobs log over a mirror's life: nodes added, the filter put in and taken out, the
/// switch-over, every job state change, READY, the end.
/// </summary>
public sealed class DaemonLogTests
{
    const long Size = 1 << 20;

    [Fact]
    public async Task A_mirror_logs_its_graph_changes_and_every_state_change()
    {
        var log = new LogCollector(LogLevel.Information);
        await using (var daemon = new DaemonHarness(log))
        {
            await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "src", ["size"] = Size });
            await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "tgt", ["size"] = Size });
            await daemon.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m0", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" });
            await daemon.WaitStatusAsync("m0", JobStatus.Ready);
            await daemon.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m0" });
            await daemon.WaitStatusAsync("m0", JobStatus.Null);
        }

        var messages = log.Records.Select(r => $"{r.EventName}: {r.Message}").ToList();
        var context = string.Join("\n", messages);
        Assert.True(messages.IndexOf("graph_node_added: node 'src' added: driver null-co, read-write") == 0, context);
        Assert.Contains("graph_node_added: node 'tgt' added: driver null-co, read-write", messages);
        var filter = Assert.Single(log.Records, r => r.EventName == "graph_node_added" && r.Message.Contains("driver mirror_top", StringComparison.Ordinal));
        var filterName = filter.Message.Split('\'')[1];
        var states = log.Records.Where(r => r.EventName == "job_state_change").Select(r => r.Message.Split(' ')[^1]).ToList();
        Assert.Equal(["created", "running", "ready", "waiting", "pending", "concluded", "null"], states);
        Assert.Contains($"job_ready: mirror job 'm0' is ready to complete: {Size} of {Size} bytes copied", messages);
        Assert.Contains($"job_completed: mirror job 'm0' completed: {Size} of {Size} bytes", messages);
        // The filter goes in above the source, and at the switch-over the target takes the source's users.
        Assert.Contains($"graph_node_replaced: users of node 'src' moved to node '{filterName}'", messages);
        Assert.Contains(messages, m => m.StartsWith("graph_node_replaced: users of node ", StringComparison.Ordinal) && m.EndsWith("moved to node 'tgt'", StringComparison.Ordinal));
        Assert.Contains($"graph_node_removed: node '{filterName}' closed", messages);
        Assert.DoesNotContain(log.Records, r => r.Level < LogLevel.Information);
    }
}
