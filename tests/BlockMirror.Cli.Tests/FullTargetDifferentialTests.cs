using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A mirror whose target's file system fills up for real (a tmpfs mounted small by the test, not an injected
/// error), run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>, onto a raw and a qcow2
/// target. With <c>on-target-error=enospc</c> the job stops at the first write the disk refuses; once the file
/// system has room again (remounted larger) and the job is resumed, it reaches READY and completes with a
/// target equal to the source, writes the guest made while it was stopped included, which <c>qemu-img check</c> finds sound. With <c>report</c> the job fails with
/// the disk's error and leaves a target <c>qemu-img check</c> finds without corruption (clusters a refused
/// allocation left unreferenced are leaks, not errors). Both daemons give the same events. How many
/// BLOCK_JOB_ERROR events the copies in flight raise depends on timing on both daemons, so the events are
/// compared with those collapsed to the distinct kinds, in order.
/// </summary>
public sealed class FullTargetDifferentialTests : IDisposable
{
    const long Size = 8 << 20;


    readonly TempDirectory _dir = new("blockmirror-full-target-");
    readonly List<string> _mounts = [];

    public void Dispose()
    {
        foreach (var mount in _mounts)
        {
            ExternalTool.RunAsync("umount", ["-l", mount]).GetAwaiter().GetResult();
        }

        _dir.Dispose();
    }

    /// <summary>
    /// The file system's size: room for the target's start only, so the copy of 8 MiB runs out partway
    /// (3m), or for little more than a new qcow2's header and tables, so the first allocations (an L2 table,
    /// a data cluster) are refused (320k).
    /// </summary>
    /// <remarks>
    /// <paramref name="via"/>: <c>file</c>, the target's file opened by the daemon; <c>nbd</c>, a raw target
    /// exported by qemu-nbd and opened with <c>driver=nbd</c>, so the disk's ENOSPC comes over the wire.
    /// </remarks>
    [SkippableTheory]
    [InlineData("raw", "enospc", "3m", "background", "file")]
    [InlineData("qcow2", "enospc", "3m", "background", "file")]
    [InlineData("qcow2", "enospc", "320k", "background", "file")]
    [InlineData("qcow2", "enospc", "3m", "write-blocking", "file")]
    [InlineData("raw", "enospc", "3m", "background", "nbd")]
    [InlineData("raw", "report", "3m", "background", "file")]
    [InlineData("qcow2", "report", "3m", "background", "file")]
    [InlineData("qcow2", "report", "320k", "background", "file")]
    [InlineData("raw", "report", "3m", "background", "nbd")]
    public async Task A_target_file_system_that_fills_up_stops_or_fails_the_job_and_never_corrupts_the_target(string format, string policy, string room, string copyMode, string via)
    {
        RequireRoot();
        var theirs = await RunScenarioAsync(DifferentialDaemon.Qsd(), format, policy, room, copyMode, via);
        var ours = await RunScenarioAsync(DifferentialDaemon.Ours(), format, policy, room, copyMode, via);

        string[] expected = policy == "enospc"
            ?
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "BLOCK_JOB_ERROR write stop", "JOB_STATUS_CHANGE paused",
                "JOB_STATUS_CHANGE running", .. DifferentialDaemon.ReadyJobEvents.Skip(2),
            ]
            :
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "BLOCK_JOB_ERROR write report", "JOB_STATUS_CHANGE aborting",
                "BLOCK_JOB_COMPLETED error: No space left on device", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
            ];
        Assert.Equal(expected, theirs.Events);
        Assert.Equal(theirs.Events, ours.Events);
        Assert.Equal(policy == "enospc" ? "nospace" : null, theirs.StoppedIoStatus);
        Assert.Equal(theirs.StoppedIoStatus, ours.StoppedIoStatus);
    }

    async Task<(List<string> Events, string? StoppedIoStatus)> RunScenarioAsync(DifferentialDaemon daemon, string format, string policy, string room, string copyMode, string via)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        var full = await MountFullAsync(dir, room);

        // A source with data everywhere (no zero to skip), in pieces a lost or misplaced chunk would show.
        var source = $"{dir}/source.raw";
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", source, $"{Size}");
        await ImageRecipes.QemuIoAsync(source, "raw", Enumerable.Range(0, (int)(Size >> 20)).Select(i => $"write -P {0x41 + i} {i << 20} 1M"));
        var target = $"{full}/target.{format}";
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", format, target, $"{Size}");

        await using var destination = via == "nbd" ? await NbdDestination.StartAsync(target, $"{dir}/destination.sock") : null;
        string[] blockdevs =
        [
            "--blockdev", $"driver=file,node-name=file0,filename={source}", "--blockdev", "driver=raw,node-name=disk,file=file0",
            .. destination?.ClientNode("target", reconnectDelay: 0)
                ?? ["--blockdev", $"driver=file,node-name=target-file,filename={target}", "--blockdev", $"driver={format},node-name=target,file=target-file"],
        ];
        string? stoppedIoStatus = null;
        var events = await daemon.RunAsync(dir, blockdevs, "disk", async (qmp, uri) =>
        {
            await qmp.ExecuteAsync("blockdev-mirror", new JsonObject
            {
                ["job-id"] = "job0", ["device"] = "disk", ["target"] = "target", ["sync"] = "full", ["on-target-error"] = policy, ["copy-mode"] = copyMode,
            });
            if (policy == "enospc")
            {
                await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "paused");
                var job = (await qmp.ExecuteAsync("query-block-jobs"))!.AsArray().Single()!;
                stoppedIoStatus = (string?)job["io-status"];

                // The guest writes on while the job is stopped: across the refused range and past it. (In
                // write-blocking mode these writes go to the target too and are refused there: the guest's
                // writes succeed, the job's policy takes the error, and the ranges stay dirty.)
                await ImageRecipes.QemuIoAsync(uri, "raw", ["write -P 0xe1 1000 3000", "write -P 0xe2 2M 1M", "write -P 0xe3 7M 4096"]);

                // Room again, then on: the refused writes were left to copy again.
                await ExternalTool.RunCheckedAsync("mount", "-o", "remount,size=64m", full);
                await qmp.ExecuteAsync("block-job-resume", new JsonObject { ["device"] = "job0" });
                await qmp.WaitEventAsync("BLOCK_JOB_READY");
                await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            }

            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });

        if (destination is not null)
        {
            await destination.DisposeAsync();
        }

        if (format == "qcow2")
        {
            // Exit status 0: sound; 3: only leaked clusters (a refused allocation); 2: corruption.
            var check = await ExternalTool.RunAsync("qemu-img", ["check", target]);
            Assert.True(check.ExitCode == 0 || (policy == "report" && check.ExitCode == 3), $"{daemon.Name}: qemu-img check {target} gave {check.ExitCode}: {check.StandardOutput}{check.StandardError}");
        }

        if (policy == "enospc")
        {
            await QemuImages.AssertIdenticalAsync(source, target, "raw", format);
        }

        return ([.. CollapseErrors(events)], stoppedIoStatus);
    }

    /// <summary>
    /// block-commit into a base whose file system fills up, with <c>on-error=enospc</c>, on both daemons: an
    /// intermediate commit (mid into the base, the commit job's own copy) and an active one (the top into
    /// the base, the mirror's copy). The job stops at the refused write; once the file system has room and
    /// the job is resumed it finishes (the active one after READY and complete), and the base holds the
    /// committed view and is sound.
    /// </summary>
    [SkippableTheory]
    [InlineData("intermediate")]
    [InlineData("active")]
    public async Task A_commit_into_a_base_on_a_full_file_system_stops_and_resumes_to_a_whole_base(string kind)
    {
        RequireRoot();
        var theirs = await RunCommitAsync(DifferentialDaemon.Qsd(), kind);
        var ours = await RunCommitAsync(DifferentialDaemon.Ours(), kind);

        string[] end = kind == "active"
            ? ["JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY", "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED"]
            : ["JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED"];
        string[] expected =
        [
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "BLOCK_JOB_ERROR write stop", "JOB_STATUS_CHANGE paused",
            "JOB_STATUS_CHANGE running", .. end, "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
        ];
        Assert.Equal(expected, theirs.Events);
        Assert.Equal(theirs.Events, ours.Events);
        Assert.Equal(("nospace", "nospace"), (theirs.StoppedIoStatus, ours.StoppedIoStatus));
    }

    async Task<(List<string> Events, string? StoppedIoStatus)> RunCommitAsync(DifferentialDaemon daemon, string kind)
    {
        var dir = Path.Combine(_dir.Path, $"commit-{kind}-{daemon.Name}");
        var full = await MountFullAsync(dir, "3m");

        var @base = await ImageRecipes.Qcow2Async(full, "base.qcow2", $"{Size}", [], []);
        var mid = await ImageRecipes.Qcow2Async(dir, "mid.qcow2", null, ["-b", @base, "-F", "qcow2"],
            [.. Enumerable.Range(0, 6).Select(i => $"write -P {0x21 + i} {i << 20} 1M")]);
        var top = await ImageRecipes.Qcow2Async(dir, "top.qcow2", null, ["-b", mid, "-F", "qcow2"], ["write -P 0x33 1M 64k"]);

        // What the base must hold at the end: mid's view for an intermediate commit, the top's for an active one.
        var expected = $"{dir}/expected.raw";
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", kind == "active" ? top : mid, expected);
        string[] blockdevs =
        [
            "--blockdev", $"driver=file,node-name=base-file,filename={@base}", "--blockdev", "driver=qcow2,node-name=base,file=base-file",
            "--blockdev", $"driver=file,node-name=mid-file,filename={mid}", "--blockdev", "driver=qcow2,node-name=mid,file=mid-file,backing=base",
            "--blockdev", $"driver=file,node-name=top-file,filename={top}", "--blockdev", "driver=qcow2,node-name=top,file=top-file,backing=mid",
        ];
        string? stoppedIoStatus = null;
        var events = await daemon.RunAsync(dir, blockdevs, "top", async (qmp, _) =>
        {
            var commit = new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["base-node"] = "base", ["on-error"] = "enospc" };
            if (kind == "intermediate")
            {
                commit["top-node"] = "mid";
            }

            await qmp.ExecuteAsync("block-commit", commit);
            await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "paused");
            var job = (await qmp.ExecuteAsync("query-block-jobs"))!.AsArray().Single()!;
            stoppedIoStatus = (string?)job["io-status"];

            await ExternalTool.RunCheckedAsync("mount", "-o", "remount,size=64m", full);
            await qmp.ExecuteAsync("block-job-resume", new JsonObject { ["device"] = "job0" });
            if (kind == "active")
            {
                await qmp.WaitEventAsync("BLOCK_JOB_READY");
                await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            }

            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });

        await AssertSoundAsync(@base);
        await QemuImages.AssertIdenticalAsync(expected, @base, "raw", "qcow2");
        return ([.. CollapseErrors(events)], stoppedIoStatus);
    }

    /// <summary>
    /// The offline commands on a full file system, beside qemu-img's: <c>commit</c> into a base that cannot
    /// grow, and <c>mirror</c> onto an existing qcow2 that cannot. Each fails (exit 1, as qemu-img's) with
    /// the file, the offset and the disk's error; the top keeps every write (it is emptied only after a
    /// commit succeeds), and both images stay sound.
    /// </summary>
    [SkippableFact]
    public async Task The_offline_commit_and_mirror_fail_loudly_and_keep_every_image_sound()
    {
        RequireRoot();
        ExternalTool.Require("qemu-img");
        var full = await MountFullAsync(_dir.Path, "3m");

        // commit: the top's 6 MiB do not fit beside the base. qemu-img's run first, then its files go.
        var @base = $"{full}/base.qcow2";
        var top = _dir.File("top.qcow2");
        await MakeChainAsync(@base, top);
        var theirs = await ExternalTool.RunAsync("qemu-img", ["commit", "-f", "qcow2", top]);
        File.Delete(@base);
        await MakeChainAsync(@base, top);
        var expected = _dir.File("expected.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", top, expected);
        var commit = await BlockMirrorCli.RunAsync("commit", top);
        Assert.Equal((1, 1), (theirs.ExitCode, commit.ExitCode));
        Assert.Contains($"'{@base}': write at offset ", commit.StandardError, StringComparison.Ordinal);
        Assert.Contains(": No space left on device", commit.StandardError, StringComparison.Ordinal);
        await QemuImages.AssertIdenticalAsync(expected, top, "raw", "qcow2");
        await AssertSoundAsync(@base);
        await AssertSoundAsync(top);
        File.Delete(@base);

        // mirror onto an existing qcow2 of 8 MiB.
        var source = _dir.File("source.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", source, $"{Size}");
        await ImageRecipes.QemuIoAsync(source, "raw", ["write -P 0x5a 0 8M"]);
        var target = $"{full}/target.qcow2";
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", target, $"{Size}");
        var mirror = await BlockMirrorCli.RunAsync("mirror", source, target);
        Assert.Equal(1, mirror.ExitCode);
        Assert.Contains($"'{target}': write at offset ", mirror.StandardError, StringComparison.Ordinal);
        Assert.Contains("No space left on device", mirror.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", mirror.StandardError, StringComparison.Ordinal);
        await AssertSoundAsync(target);
    }

    /// <summary>
    /// A guest writing through the NBD export of a qcow2 whose file system is full: both daemons refuse the
    /// write with ENOSPC (qemu-io reports "No space left on device"), keep serving, and take the same write
    /// once the file system has room; the image stays sound and holds it.
    /// </summary>
    [SkippableFact]
    public async Task An_export_on_a_full_file_system_refuses_the_write_with_ENOSPC_and_takes_it_once_there_is_room()
    {
        RequireRoot();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Path.Combine(_dir.Path, $"export-{daemon.Name}");
            var full = await MountFullAsync(dir, "3m");
            var image = $"{full}/disk.qcow2";
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", image, $"{Size}");
            string[] blockdevs = ["--blockdev", $"driver=file,node-name=file0,filename={image}", "--blockdev", "driver=qcow2,node-name=disk,file=file0"];
            string[] write = ["-f", "raw", "-c", "write -P 0x61 0 6M"];
            await daemon.RunAsync(dir, blockdevs, "disk", async (qmp, uri) =>
            {
                var refused = await ExternalTool.RunAsync("qemu-io", [.. write, uri]);
                Assert.Contains("write failed: No space left on device", refused.StandardOutput + refused.StandardError, StringComparison.Ordinal);

                await ExternalTool.RunCheckedAsync("mount", "-o", "remount,size=64m", full);
                var taken = await ExternalTool.RunAsync("qemu-io", [.. write, uri]);
                Assert.True(taken.ExitCode == 0 && !taken.StandardOutput.Contains("failed", StringComparison.Ordinal), $"{daemon.Name}: {taken.StandardOutput}{taken.StandardError}");
            });

            await AssertSoundAsync(image);
            var check = await ExternalTool.RunAsync("qemu-io", ["-f", "qcow2", "-c", "read -P 0x61 0 6M", "-c", "read -P 0 6M 2M", image]);
            Assert.True(check.ExitCode == 0 && !check.StandardOutput.Contains("fail", StringComparison.OrdinalIgnoreCase), $"{daemon.Name}: {check.StandardOutput}");
        }
    }

    /// <summary>Mounts a tmpfs of <paramref name="room"/> (mount's words) at <c>DIR/full</c>, unmounted when the test ends.</summary>
    async Task<string> MountFullAsync(string dir, string room)
    {
        var full = Path.Combine(dir, "full");
        Directory.CreateDirectory(full);
        await ExternalTool.RunCheckedAsync("mount", "-t", "tmpfs", "-o", $"size={room}", "tmpfs", full);
        _mounts.Add(full);
        return full;
    }

    static async Task MakeChainAsync(string @base, string top)
    {
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", @base, $"{Size}");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", @base, "-F", "qcow2", top);
        await ImageRecipes.QemuIoAsync(top, "qcow2", ["write -P 0x33 0 6M"]);
    }

    static async Task AssertSoundAsync(string qcow2)
    {
        var check = await ExternalTool.RunAsync("qemu-img", ["check", qcow2]);
        Assert.True(check.ExitCode == 0, $"qemu-img check {qcow2} gave {check.ExitCode}: {check.StandardOutput}{check.StandardError}");
    }

    /// <summary>The events with every BLOCK_JOB_ERROR after the first of its kind dropped (their count is timing).</summary>
    static IEnumerable<string> CollapseErrors(List<string> events)
    {
        var seen = new HashSet<string>();
        return events.Where(e => !e.StartsWith("BLOCK_JOB_ERROR", StringComparison.Ordinal) || seen.Add(e));
    }

    static void RequireRoot()
    {
        ExternalTool.RequireRoot("a file system that fills up is a tmpfs mounted by the test, which needs root");
        ExternalTool.Require("mount");
        ExternalTool.Require("umount");
    }
}
