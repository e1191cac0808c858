using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest <c>tests/mirror-ready-cancel-error</c>, run against qemu-storage-daemon 7.2 and
/// <c>blockmirror serve</c>: a mirror whose target's flush fails after it is READY and the user has
/// soft-cancelled it. The target qcow2 sits on blkdebug with QEMU's rules: the first <c>flush_to_disk</c>
/// (before READY) moves to state 2, where <c>flush_to_disk</c> arms an error that fails the flush the job
/// makes on its way out; <c>on-target-error=stop</c> parks the job in standby. A transient error (once) is
/// resumed and the job ends; a persistent one is force-cancelled. The rules are given inline, as the iotest
/// gives them, and as a blkdebug config file. The iotest's write through HMP's qemu-io (the daemon has no
/// HMP) is made by qemu-io through the NBD export of the source, which the mirror's filter then sits above.
/// </summary>
public sealed class IotestMirrorReadyCancelError : IDisposable
{
    readonly TempDirectory _dir = new("bm-iotest-mrce-");

    public void Dispose() => _dir.Dispose();

    const string ImageSize = "1M";

    /// <summary>What qemu-storage-daemon sends when the flush error comes, then the job ends as the user chose.</summary>
    static string[] Expected(bool once) =>
    [
        "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY",
        "BLOCK_JOB_ERROR write stop", "JOB_STATUS_CHANGE standby", "JOB_STATUS_CHANGE ready",
        .. once
            ? (string[])["JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED"]
            : ["JOB_STATUS_CHANGE aborting", "BLOCK_JOB_CANCELLED"],
        "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
    ];

    /// <summary>
    /// The iotest as QEMU runs it: a known difference of our mirror job, pinned. QEMU's mirror of an empty
    /// qcow2 with sync=full writes zeroes over the whole target before READY (its READY reports 1 MiB done;
    /// the target's clusters become zero clusters), so its flush before READY has something to make
    /// durable, raises <c>flush_to_disk</c> and moves blkdebug to state 2; the write's copy then makes the
    /// flush on the way out raise it again, in state 2, and fail. Ours copies nothing before READY (READY at
    /// 0 bytes), its flush has nothing to flush and raises no event, so the first <c>flush_to_disk</c> is
    /// the one after the write's copy: it only moves to state 2, nothing is armed, and the cancelled job
    /// completes. (Whether that flush is the one on the way out or one of the flushes our mirror makes once
    /// a slice while READY depends on timing, with the same events.) With data in the source both daemons
    /// agree up to that READY flush, but then ours can meet the armed error in a READY flush before the
    /// cancel, as QEMU never does: that variant is not compared here. When the mirror job writes QEMU's
    /// zeroes, this test fails and the pinned sequence goes.
    /// </summary>
    [SkippableTheory]
    [InlineData(true, false)]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public async Task Our_mirror_of_an_empty_source_has_nothing_to_flush_before_ready_and_no_error_comes(bool once, bool configFile)
    {
        DifferentialDaemon[] daemons = [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];
        var events = new List<string>[daemons.Length];
        for (var i = 0; i < daemons.Length; i++)
        {
            events[i] = await RunAsync(daemons[i], Path.Combine(_dir.Path, daemons[i].Name), once, configFile);
        }

        Assert.Equal(Expected(once), events[0]);
        Assert.Equal(
        [
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY",
            "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED",
            "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
        ], events[1]);
    }

    /// <summary>The iotest's script on one daemon; returns its events.</summary>
    static async Task<List<string>> RunAsync(DifferentialDaemon daemon, string dir, bool once, bool configFile)
    {
        Directory.CreateDirectory(dir);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", $"{dir}/source.qcow2", ImageSize);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", $"{dir}/target.qcow2", ImageSize);

        return JobErrorEvents.WithoutDrainPauses(await daemon.RunAsync(dir, Blockdevs(dir, once, configFile), "source", async (qmp, uri) =>
        {
            await qmp.ExecuteAsync("blockdev-mirror", new JsonObject
            {
                ["job-id"] = "mirror", ["device"] = "source", ["target"] = "target", ["filter-node-name"] = "mirror-top",
                ["sync"] = "full", ["on-target-error"] = "stop",
            });
            await qmp.WaitEventAsync("BLOCK_JOB_READY");

            // Something to copy, so that the cancelled job does not leave at once but flushes first.
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write 0 64k", uri);
            await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "mirror" });

            // The flush error parks the job in standby (BLOCK_JOB_ERROR comes just before).
            var answered = 0;
            while (true)
            {
                var status = (string?)(await qmp.WaitEventAsync("JOB_STATUS_CHANGE"))["data"]!["status"];
                if (status == "standby" && JobErrorEvents.TakeUnanswered(qmp, ref answered))
                {
                    // Transient: try again. Persistent: no point, force the cancel.
                    await qmp.ExecuteAsync("block-job-" + (once ? "resume" : "cancel"),
                        once ? new JsonObject { ["device"] = "mirror" } : new JsonObject { ["device"] = "mirror", ["force"] = true });
                }
                else if (status == "null")
                {
                    break;
                }
            }
        }));
    }

    /// <summary>source: qcow2 over its file; target: qcow2 over blkdebug over its file, with the iotest's rules.</summary>
    static string[] Blockdevs(string dir, bool once, bool configFile)
    {
        var blkdebug = new JsonObject
        {
            ["driver"] = "blkdebug",
            ["image"] = new JsonObject { ["driver"] = "file", ["filename"] = $"{dir}/target.qcow2" },
        };
        if (configFile)
        {
            File.WriteAllText($"{dir}/blkdebug.cfg", $"""
                [set-state]
                event = "flush_to_disk"
                state = "1"
                new_state = "2"

                [inject-error]
                event = "flush_to_disk"
                once = "{(once ? "on" : "off")}"
                immediately = "on"
                state = "2"
                """);
            blkdebug["config"] = $"{dir}/blkdebug.cfg";
        }
        else
        {
            blkdebug["set-state"] = new JsonArray(new JsonObject { ["event"] = "flush_to_disk", ["state"] = 1, ["new_state"] = 2 });
            blkdebug["inject-error"] = new JsonArray(new JsonObject { ["event"] = "flush_to_disk", ["once"] = once, ["immediately"] = true, ["state"] = 2 });
        }

        var target = new JsonObject { ["node-name"] = "target", ["driver"] = "qcow2", ["file"] = blkdebug };
        return
        [
            "--blockdev", $"driver=qcow2,node-name=source,file.driver=file,file.filename={dir}/source.qcow2",
            "--blockdev", target.ToJsonString(),
        ];
    }
}
