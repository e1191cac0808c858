using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 041, classes TestReadErrors and TestWriteErrors, run against qemu-storage-daemon 7.2 and
/// <c>blockmirror serve</c>: a full mirror whose source's backing file (read) or target (write) fails once
/// at the 1 MiB mark, under each error policy. The fault comes from the iotest's blkdebug config file: the
/// error is armed by read_aio (write_aio) in state 1, and every such event flips the state between 1 and 2.
/// The iotest opens those files as <c>blkdebug:CONFIG:IMAGE</c>; here each is a node of its own over the
/// same config file (qemu-storage-daemon has no drive options). Both daemons must give the same events,
/// the same io-status while stopped, and, unless the job failed, a target equal to the source.
/// </summary>
public sealed class Iotest041BlkdebugErrors : IDisposable
{
    readonly TempDirectory _dir = new("bm-iotest041-blkdebug-");

    public void Dispose() => _dir.Dispose();

    const int ImageLength = 2 << 20;

    /// <summary>The iotest's MIRROR_GRANULARITY: the rule's sector is there.</summary>
    const int FaultOffset = 1 << 20;

    [SkippableTheory]
    [InlineData("read", "report")]
    [InlineData("read", "ignore")]
    [InlineData("read", "stop")]
    [InlineData("write", "report")]
    [InlineData("write", "ignore")]
    [InlineData("write", "stop")]
    public async Task An_error_once_in_a_mirror_ends_the_same_on_both_daemons(string operation, string policy)
    {
        DifferentialDaemon[] daemons = [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];
        var events = new List<string>[daemons.Length];
        var stopped = new string?[daemons.Length];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Path.Combine(_dir.Path, daemons[i].Name);
            var index = i;
            await MakeImagesAsync(dir, operation);
            events[i] = JobErrorEvents.WithoutDrainPauses(await daemons[i].RunAsync(dir, Blockdevs(dir, operation), "drive0", async (qmp, _) =>
            {
                var answered = 0;
                await qmp.ExecuteAsync("blockdev-mirror", new JsonObject
                {
                    ["job-id"] = "drive0", ["device"] = "drive0", ["target"] = "target", ["sync"] = "full",
                    [operation == "read" ? "on-source-error" : "on-target-error"] = policy,
                });
                while (true)
                {
                    var e = await qmp.WaitEventAsync("JOB_STATUS_CHANGE");
                    switch ((string?)e["data"]!["status"])
                    {
                        case "paused" when JobErrorEvents.TakeUnanswered(qmp, ref answered):
                            var job = (await qmp.ExecuteAsync("query-block-jobs"))!.AsArray().Single()!;
                            stopped[index] = $"paused={(bool)job["paused"]!} io-status={(string?)job["io-status"]}";
                            await qmp.ExecuteAsync("block-job-resume", new JsonObject { ["device"] = "drive0" });
                            break;
                        case "ready":
                            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "drive0" });
                            break;
                        case "null":
                            return;
                    }
                }
            }));
            if (policy != "report")
            {
                await QemuImages.AssertIdenticalAsync($"{dir}/test.qcow2", $"{dir}/target.qcow2", "qcow2", "qcow2");
            }
        }

        var error = $"BLOCK_JOB_ERROR {operation} {policy}";
        string[] expected = policy == "report"
            ?
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", error, "JOB_STATUS_CHANGE aborting",
                "BLOCK_JOB_COMPLETED error: Input/output error", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
            ]
            :
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", error,
                .. policy == "stop" ? (string[])["JOB_STATUS_CHANGE paused", "JOB_STATUS_CHANGE running"] : [],
                .. DifferentialDaemon.ReadyJobEvents[2..],
            ];
        Assert.Equal(expected, events[0]);
        Assert.Equal(events[0], events[1]);
        Assert.Equal(policy == "stop" ? "paused=True io-status=failed" : null, stopped[0]);
        Assert.Equal(stopped[0], stopped[1]);
    }

    /// <summary>
    /// backing.raw, fully written (the iotest's sector markers: any data will do); test.qcow2 over it (for
    /// the read errors with 512 bytes of its own, for sync=top users of the iotest); target.qcow2, empty;
    /// and the iotest's blkdebug config file.
    /// </summary>
    static async Task MakeImagesAsync(string dir, string operation)
    {
        Directory.CreateDirectory(dir);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", $"{dir}/backing.raw", $"{ImageLength}");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", $"write -P 0x5a 0 {ImageLength}", $"{dir}/backing.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", "-b", "backing.raw", "-F", "raw", $"{dir}/test.qcow2");
        if (operation == "read")
        {
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", $"write {FaultOffset + 65536} 512", $"{dir}/test.qcow2");
        }

        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", $"{dir}/target.qcow2", $"{ImageLength}");
        var e = operation == "read" ? "read_aio" : "write_aio";
        await File.WriteAllTextAsync($"{dir}/blkdebug.conf", $"""

            [inject-error]
            state = "1"
            event = "{e}"
            errno = "5"
            immediately = "off"
            once = "on"
            sector = "{FaultOffset / 512}"

            [set-state]
            state = "1"
            event = "{e}"
            new_state = "2"

            [set-state]
            state = "2"
            event = "{e}"
            new_state = "1"

            """);
    }

    /// <summary>drive0: test.qcow2 over its file, its backing raw over blkdebug for the read errors; target: qcow2, over blkdebug for the write errors.</summary>
    static string[] Blockdevs(string dir, string operation)
    {
        string Debug(string name, string image, bool readOnly) => new JsonObject
        {
            ["driver"] = "blkdebug", ["node-name"] = name, ["read-only"] = readOnly, ["config"] = $"{dir}/blkdebug.conf", ["image"] = image,
        }.ToJsonString();

        return
        [
            "--blockdev", $"driver=file,node-name=backing-file,filename={dir}/backing.raw,read-only=on",
            .. operation == "read"
                ? (string[])["--blockdev", Debug("backing-debug", "backing-file", readOnly: true), "--blockdev", "driver=raw,node-name=backing,file=backing-debug,read-only=on"]
                : ["--blockdev", "driver=raw,node-name=backing,file=backing-file,read-only=on"],
            "--blockdev", $"driver=qcow2,node-name=drive0,file.driver=file,file.filename={dir}/test.qcow2,backing=backing",
            "--blockdev", $"driver=file,node-name=target-file,filename={dir}/target.qcow2",
            .. operation == "write"
                ? (string[])["--blockdev", Debug("target-debug", "target-file", readOnly: false), "--blockdev", "driver=qcow2,node-name=target,file=target-debug"]
                : ["--blockdev", "driver=qcow2,node-name=target,file=target-file"],
        ];
    }
}
