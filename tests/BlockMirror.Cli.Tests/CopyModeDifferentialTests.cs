using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// copy-mode=write-blocking on blockdev-mirror and drive-mirror, run unchanged on qemu-storage-daemon 7.2 and
/// on <c>blockmirror serve</c>: a disk exported over NBD and written by qemu-io before, during and after the
/// copy. Both daemons give the same events and the same query-block-jobs fields, and both targets hold every
/// write. Pinned differences: our query-block-jobs carries QEMU 8.2's <c>actively-synced</c> (7.2 has no such
/// member), and block-job-change (8.2) is a command 7.2 does not know. (Our progress members are pinned in
/// <see cref="MirrorProgressFieldDifferentialTests"/>.)
/// </summary>
public sealed class CopyModeDifferentialTests : IDisposable
{
    const long Size = 8 << 20;

    readonly TempDirectory _dir = new("blockmirror-copy-mode-");

    public void Dispose() => _dir.Dispose();

    static readonly (string Phase, int Pattern, long Offset, int Length)[] Writes =
    [
        ("before", 0x11, 0, 1 << 20),
        ("before", 0x12, 5 << 20, 64 << 10),
        ("running", 0x21, 512 << 10, 128 << 10),
        ("running", 0x22, (3 << 20) + 1000, 5000),
        ("ready", 0x31, 6 << 20, 1 << 20),
        ("ready", 0x32, 100, 700),
    ];

    /// <summary>The members of a job in query-block-jobs whose values both daemons must agree on (len and offset depend on timing).</summary>
    static readonly string[] ComparedFields = ["type", "device", "status", "ready", "io-status", "paused", "speed", "auto-finalize", "auto-dismiss"];

    [SkippableTheory]
    [InlineData("blockdev-mirror")]
    [InlineData("drive-mirror")]
    public async Task A_write_blocking_mirror_gives_the_same_events_and_fields_and_loses_no_write(string command)
    {
        var theirs = await RunScenarioAsync(DifferentialDaemon.Qsd(), command);
        var ours = await RunScenarioAsync(DifferentialDaemon.Ours(), command);

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, theirs.Events);
        Assert.Equal(theirs.Events, ours.Events);
        Assert.Equal(theirs.Fields, ours.Fields);

        // Pinned: QEMU 8.2's actively-synced, which 7.2 lacks; ours is true once READY with writes blocking.
        Assert.Null(theirs.ActivelySynced);
        Assert.True(ours.ActivelySynced);

        // Pinned: block-job-change came with QEMU 8.2.
        Assert.Equal("CommandNotFound", theirs.ChangeReply);
        Assert.Equal("ok", ours.ChangeReply);
    }

    async Task<(List<string> Events, string Fields, bool? ActivelySynced, string ChangeReply)> RunScenarioAsync(DifferentialDaemon daemon, string command)
    {
        var dir = Path.Combine(_dir.Path, $"{daemon.Name}-{command}");
        Directory.CreateDirectory(dir);
        var size = Size.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", $"{dir}/source.raw", size);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", $"{dir}/target.raw", size);
        string[] blockdevs = ["--blockdev", $"driver=file,node-name=file0,filename={dir}/source.raw", "--blockdev", "driver=raw,node-name=disk,file=file0"];
        var fields = "";
        bool? activelySynced = null;
        var changeReply = "";
        var events = await daemon.RunAsync(dir, blockdevs, "disk", async (qmp, uri) =>
        {
            await WriteAsync(uri, "before");
            var start = new JsonObject { ["job-id"] = "job0", ["device"] = "disk", ["sync"] = "full", ["copy-mode"] = "write-blocking" };
            if (command == "blockdev-mirror")
            {
                await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "target-file", ["filename"] = $"{dir}/target.raw" });
                await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "raw", ["node-name"] = "target", ["file"] = "target-file" });
                start["target"] = "target";
            }
            else
            {
                start["target"] = $"{dir}/target.raw";
                start["format"] = "raw";
                start["mode"] = "existing";
            }

            await qmp.ExecuteAsync(command, start);
            await WriteAsync(uri, "running");
            await qmp.WaitEventAsync("BLOCK_JOB_READY");
            await WriteAsync(uri, "ready");

            // Wait until the job has settled in READY with nothing dirty: ours says so through actively-synced;
            // QEMU's loop gets there as soon, with writes blocking and none being made.
            var job = await QueryJobAsync(qmp);
            using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
            {
                while (job["actively-synced"] is JsonValue synced && !(bool)synced)
                {
                    Assert.False(cts.IsCancellationRequested, "actively-synced never became true");
                    await Task.Delay(5, CancellationToken.None);
                    job = await QueryJobAsync(qmp);
                }
            }

            fields = string.Join(", ", ComparedFields.Select(f => $"{f}={job[f]?.ToJsonString()}"))
                + $"; members: {string.Join(",", job.Select(p => p.Key).Where(k => k != "actively-synced" && !MirrorProgressFieldDifferentialTests.OurMembers.Contains(k)))}";
            activelySynced = job["actively-synced"] is JsonValue value ? (bool)value : null;

            var reply = await qmp.CommandAsync("block-job-change", new JsonObject { ["id"] = "job0", ["type"] = "mirror", ["copy-mode"] = "write-blocking" });
            changeReply = reply["error"] is { } error ? (string)error["class"]! : "ok";

            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });

        var target = await File.ReadAllBytesAsync($"{dir}/target.raw");
        var expected = new byte[Size];
        foreach (var write in Writes)
        {
            expected.AsSpan((int)write.Offset, write.Length).Fill((byte)write.Pattern);
        }

        Assert.True(expected.AsSpan().SequenceEqual(target), $"{daemon.Name}: the target does not hold every write");
        return (events, fields, activelySynced, changeReply);
    }

    static async Task<JsonObject> QueryJobAsync(QmpClient qmp) =>
        (JsonObject)(await qmp.ExecuteAsync("query-block-jobs"))!.AsArray().Single()!;

    static Task WriteAsync(string uri, string phase) =>
        ImageRecipes.QemuIoAsync(uri, "raw", Writes.Where(w => w.Phase == phase).Select(w => $"write -P {w.Pattern} {w.Offset} {w.Length}"));
}
