using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// A monitor gets every event from the moment its qmp_capabilities is answered, however busy the machine:
/// a client that starts a job in the same breath as it negotiates sees the job's whole life.
/// </summary>
public sealed class QmpEventDeliveryTests
{
    static readonly string[] JobLife =
    [
        "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY",
        "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE concluded",
        "JOB_STATUS_CHANGE null",
    ];

    [Fact]
    public async Task A_job_started_right_after_negotiation_reports_every_event_under_cpu_load()
    {
        await using var monitor = new MonitorHarness("events");
        var socket = monitor.SocketPath;
        await using (var setup = await QmpClient.ConnectAsync(socket))
        {
            foreach (var name in (string[])["src", "tgt"])
            {
                await setup.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = name, ["size"] = 1 << 20 });
            }
        }

        // Busy threads on every core, so that the daemon's threads are preempted at arbitrary points.
        using var stop = new CancellationTokenSource();
        var burners = Enumerable.Range(0, Environment.ProcessorCount * 2)
            .Select(_ => Task.Factory.StartNew(() => { while (!stop.IsCancellationRequested) { Thread.SpinWait(1000); } }, TaskCreationOptions.LongRunning))
            .ToArray();
        try
        {
            foreach (var run in Seeds.Range(ciDefault: 40))
            {
                await using var client = await QmpClient.ConnectAsync(socket, negotiate: false);
                var id = $"job{run}";
                // Negotiation and the job in one write: the job starts as soon as the session is negotiated.
                await client.SendRawAsync(
                    """{"execute": "qmp_capabilities"}""" + "\n" +
                    new JsonObject
                    {
                        ["execute"] = "blockdev-mirror",
                        ["arguments"] = new JsonObject { ["job-id"] = id, ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" },
                    }.ToJsonString() + "\n");
                for (var replies = 0; replies < 2;)
                {
                    var message = await client.ReadObjectAsync(TimeSpan.FromSeconds(30));
                    if (message.ContainsKey("event"))
                    {
                        client.Events.Add(message);
                    }
                    else
                    {
                        Assert.True(message.ContainsKey("return"), message.ToJsonString());
                        replies++;
                    }
                }

                await client.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "ready");
                Assert.NotNull(await client.ExecuteAsync("job-complete", new JsonObject { ["id"] = id }));
                await client.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "null");

                Assert.Equal(JobLife, client.Events.Select(Describe));
            }
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(burners);
        }
    }

    static string Describe(JsonObject e) =>
        (string)e["event"]! == "JOB_STATUS_CHANGE" ? $"JOB_STATUS_CHANGE {(string?)e["data"]!["status"]}" : (string)e["event"]!;
}
