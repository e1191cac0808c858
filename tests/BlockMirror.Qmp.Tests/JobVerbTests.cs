using System.Text.Json.Nodes;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// The job verbs where BlockMirror once differed from QEMU 7.2 (the differential tests in
/// BlockMirror.Cli.Tests/Iotests compare them with qemu-storage-daemon; these need no QEMU): job-cancel
/// always forces, a soft block-job-cancel of a paused job is refused, quit ends every job and says so before
/// it answers, and a job without an id is refused.
/// </summary>
public sealed class JobVerbTests
{
    static async Task<DaemonHarness> WithNullNodesAsync(params string[] names)
    {
        var daemon = new DaemonHarness();
        foreach (var name in names)
        {
            await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = name, ["size"] = 1 << 20 });
        }

        return daemon;
    }

    static async Task StartReadyMirrorAsync(DaemonHarness daemon, string id, string source, string target, bool autoFinalize = true, bool autoDismiss = true)
    {
        await daemon.ExecuteAsync("blockdev-mirror", new JsonObject
        {
            ["job-id"] = id, ["device"] = source, ["target"] = target, ["sync"] = "full",
            ["auto-finalize"] = autoFinalize, ["auto-dismiss"] = autoDismiss,
        });
        await daemon.WaitStatusAsync(id, JobStatus.Ready);
    }

    static List<string> EventsOf(DaemonHarness daemon, string id) =>
        [.. daemon.Events.Where(e => JobOf(e) == id).Select(DaemonHarness.Describe)];

    static string JobOf(JobEvent e) => e switch
    {
        JobStatusChangeEvent s => s.Id,
        BlockJobProgressEvent p => p.Device,
        BlockJobPendingEvent p => p.Id,
        BlockJobErrorEvent x => x.Device,
        _ => "",
    };

    [Fact]
    public async Task Job_cancel_after_ready_aborts_the_job_rather_than_completing_it()
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        await StartReadyMirrorAsync(daemon, "m", "s", "t");

        await daemon.ExecuteAsync("job-cancel", new JsonObject { ["id"] = "m" });
        await daemon.WaitStatusAsync("m", JobStatus.Null);

        Assert.Equal(
            ["JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:running", "JOB_STATUS_CHANGE:ready", "BLOCK_JOB_READY",
             "JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"],
            EventsOf(daemon, "m"));
    }

    [Fact]
    public async Task A_soft_block_job_cancel_of_a_paused_job_is_refused_and_a_forced_one_is_not()
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        await StartReadyMirrorAsync(daemon, "m", "s", "t");
        await daemon.ExecuteAsync("block-job-pause", new JsonObject { ["device"] = "m" });
        await daemon.WaitStatusAsync("m", JobStatus.Standby);

        Assert.Equal("The block job for device 'm' is currently paused", await daemon.ErrorAsync("block-job-cancel", new JsonObject { ["device"] = "m" }));
        Assert.Equal(JobStatus.Standby, daemon.Daemon.Jobs.Get("m").Status);

        await daemon.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "m", ["force"] = true });
        await daemon.WaitStatusAsync("m", JobStatus.Null);
        Assert.Contains("BLOCK_JOB_CANCELLED", EventsOf(daemon, "m"));
    }

    [Fact]
    public async Task Quit_ends_every_job_and_announces_it_before_it_answers()
    {
        await using var daemon = await WithNullNodesAsync("s1", "t1", "s2", "t2", "s3", "t3");
        await StartReadyMirrorAsync(daemon, "ready", "s1", "t1");
        await StartReadyMirrorAsync(daemon, "pending", "s2", "t2", autoFinalize: false);
        await daemon.ExecuteAsync("job-complete", new JsonObject { ["id"] = "pending" });
        await daemon.WaitStatusAsync("pending", JobStatus.Pending);
        await StartReadyMirrorAsync(daemon, "concluded", "s3", "t3", autoDismiss: false);
        await daemon.ExecuteAsync("job-pause", new JsonObject { ["id"] = "concluded" });
        await daemon.WaitStatusAsync("concluded", JobStatus.Standby);
        await daemon.ExecuteAsync("job-resume", new JsonObject { ["id"] = "concluded" });
        await daemon.ExecuteAsync("job-complete", new JsonObject { ["id"] = "concluded" });
        await daemon.WaitStatusAsync("concluded", JobStatus.Concluded);

        await daemon.ExecuteAsync("quit");

        Assert.Empty(daemon.Daemon.Jobs.Jobs);
        Assert.Equal(["JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"], EventsOf(daemon, "ready")[^4..]);
        Assert.Equal(["BLOCK_JOB_PENDING", "JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"], EventsOf(daemon, "pending")[^5..]);
        Assert.Equal(["BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"], EventsOf(daemon, "concluded")[^3..]);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    public async Task A_mirror_without_an_id_is_refused_as_an_invalid_empty_id(string? jobId)
    {
        await using var daemon = await WithNullNodesAsync("s", "t");
        var arguments = new JsonObject { ["device"] = "s", ["target"] = "t", ["sync"] = "full" };
        if (jobId is not null)
        {
            arguments["job-id"] = jobId;
        }

        Assert.Equal("Invalid job ID ''", await daemon.ErrorAsync("blockdev-mirror", arguments));
        Assert.Empty(daemon.Daemon.Jobs.Jobs);
    }
}
