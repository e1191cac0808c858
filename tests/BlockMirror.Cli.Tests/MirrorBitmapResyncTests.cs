using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Incremental re-sync (sync=bitmap, Proxmox's interface; README "Extensions"): a persistent bitmap made by
/// <c>qemu-img bitmap</c> records what qemu-io changes after the target was made equal to the source, and the
/// mirror copies only that. QEMU 7.2 has no such mode: the differential test pins its refusal.
/// </summary>
public sealed class MirrorBitmapResyncTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-bitmap-resync-");

    public void Dispose() => _dir.Dispose();

    const long Size = 16 << 20;

    /// <summary>A dense 16 MiB qcow2 source, a byte-for-byte copy as the target, then bitmap b0 and 192 KiB (1.2 %) of changes it records.</summary>
    async Task<(string Source, string Target)> InSyncThenChangedAsync(string dir, string[]? bitmapArguments = null, string[]? targetConvert = null)
    {
        var source = await ImageRecipes.Qcow2Async(dir, "source.qcow2", "16M", [], ["write -P 0x11 0 16M"]);
        var target = Path.Combine(dir, "target.qcow2");
        if (targetConvert is null)
        {
            File.Copy(source, target);
        }
        else
        {
            await ExternalTool.RunCheckedAsync("qemu-img", ["convert", "-f", "qcow2", "-O", "qcow2", .. targetConvert, source, target]);
        }

        await ExternalTool.RunCheckedAsync("qemu-img", ["bitmap", "--add", .. bitmapArguments ?? [], source, "b0"]);
        await ImageRecipes.QemuIoAsync(source, "qcow2", ["write -P 0x22 1M 64k", "write -P 0x33 5M 64k", "write -P 0x44 13M 36k"]);
        return (source, target);
    }

    /// <summary>The offset of the BLOCK_JOB_COMPLETED a <c>mirror --json</c> printed: the bytes its job copied.</summary>
    internal static long CopiedBytes(CliResult result)
    {
        Assert.True(result.ExitCode == 0, result.ToString());
        foreach (var line in result.OutputLines)
        {
            using var document = JsonDocument.Parse(line);
            var e = document.RootElement;
            if (e.GetProperty("event").GetString() == "BLOCK_JOB_COMPLETED")
            {
                return e.GetProperty("data").GetProperty("offset").GetInt64();
            }
        }

        throw new InvalidOperationException($"no BLOCK_JOB_COMPLETED in {result}");
    }

    [SkippableFact]
    public async Task After_1_percent_changed_a_resync_copies_about_1_percent_and_the_target_equals_the_source()
    {
        var (source, target) = await InSyncThenChangedAsync(_dir.Path);

        // never: the bitmap keeps its bits, so a second run copies the same chunks again.
        var first = await BlockMirrorCli.RunAsync("mirror", "--json", "--bitmap", "b0", "--bitmap-mode", "never", source, target);
        Assert.Equal(3 * 64 * 1024, CopiedBytes(first));
        await QemuImages.AssertIdenticalAsync(source, target, "qcow2", "qcow2");

        // on-success (the command line's default) clears it once in sync, and the image stores it so.
        Assert.Equal(3 * 64 * 1024, CopiedBytes(await BlockMirrorCli.RunAsync("mirror", "--json", "--bitmap", "b0", source, target)));
        Assert.Equal(0, CopiedBytes(await BlockMirrorCli.RunAsync("mirror", "--json", "--bitmap", "b0", source, target)));
        Assert.True(3 * 64 * 1024 <= Size / 50, "the change is about 1 % of the disk");
        await QemuImages.AssertIdenticalAsync(source, target, "qcow2", "qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "check", "-f", "qcow2", source);
    }

    [SkippableFact]
    public async Task A_target_whose_clusters_are_larger_than_the_bitmap_granularity_is_refused_naming_both_sizes()
    {
        var (source, target) = await InSyncThenChangedAsync(_dir.Path, ["-g", "65536"], ["-o", "cluster_size=131072"]);
        var before = QemuImages.Fingerprint(target);
        var result = await BlockMirrorCli.RunAsync("mirror", "--bitmap", "b0", source, target);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("granularity (65536 bytes)", result.StandardError, StringComparison.Ordinal);
        Assert.Contains("cluster size (131072 bytes)", result.StandardError, StringComparison.Ordinal);
        Assert.Equal(before, QemuImages.Fingerprint(target));
    }

    [SkippableFact]
    public async Task A_missing_target_is_refused_before_anything_is_created()
    {
        var (source, _) = await InSyncThenChangedAsync(_dir.Path);
        var missing = _dir.File("missing.qcow2");
        var result = await BlockMirrorCli.RunAsync("mirror", "--bitmap", "b0", source, missing);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("does not exist", result.StandardError, StringComparison.Ordinal);
        Assert.False(File.Exists(missing));
    }

    /// <summary>
    /// blockdev-mirror and drive-mirror with Proxmox's arguments on qemu-storage-daemon 7.2 and on ours: 7.2
    /// refuses them (it has neither the arguments nor the mode), ours runs the re-sync. A deliberate difference.
    /// </summary>
    [SkippableFact]
    public async Task Qemu_7_2_refuses_sync_bitmap_and_ours_runs_it()
    {
        DifferentialDaemon[] daemons = [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];
        var replies = new List<string>[2];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Path.Combine(_dir.Path, daemons[i].Name);
            Directory.CreateDirectory(dir);
            var (source, target) = await InSyncThenChangedAsync(dir);
            var log = replies[i] = [];
            string[] blockdevs =
            [
                "--blockdev", $"driver=qcow2,node-name=src,file.driver=file,file.filename={source}",
                "--blockdev", $"driver=qcow2,node-name=tgt,file.driver=file,file.filename={target}",
            ];
            await daemons[i].RunAsync(dir, blockdevs, "src", async (qmp, _) =>
            {
                async Task<JsonObject> Send(string command, JsonObject arguments)
                {
                    var reply = await qmp.CommandAsync(command, arguments);
                    log.Add(reply["error"] is { } error ? $"{command}: {error["desc"]}".Replace(dir, "DIR", StringComparison.Ordinal) : $"{command}: ok");
                    return reply;
                }

                await Send("blockdev-mirror", new() { ["job-id"] = "j0", ["device"] = "src", ["target"] = "tgt", ["sync"] = "bitmap" });
                await Send("drive-mirror", new() { ["job-id"] = "j0", ["device"] = "src", ["target"] = $"{dir}/other.qcow2", ["sync"] = "bitmap", ["bitmap"] = "b0", ["bitmap-mode"] = "never" });
                var run = await Send("blockdev-mirror", new() { ["job-id"] = "j0", ["device"] = "src", ["target"] = "tgt", ["sync"] = "bitmap", ["bitmap"] = "b0", ["bitmap-mode"] = "on-success" });
                if (run["error"] is null)
                {
                    await qmp.WaitEventAsync("BLOCK_JOB_READY");
                    var jobs = (await qmp.ExecuteAsync("query-block-jobs"))!.AsArray();
                    log.Add($"offset at READY: {(long)jobs[0]!["offset"]!}");
                    await qmp.ExecuteAsync("block-job-complete", new() { ["device"] = "j0" });
                    await DifferentialDaemon.WaitJobGoneAsync(qmp);
                }
            });

            if (i == 1)
            {
                await QemuImages.AssertIdenticalAsync(source, target, "qcow2", "qcow2");
            }
        }

        Assert.Equal(
            [
                "blockdev-mirror: Sync mode 'bitmap' not supported",
                "drive-mirror: Parameter 'bitmap-mode' is unexpected",
                "blockdev-mirror: Parameter 'bitmap-mode' is unexpected",
            ],
            replies[0]);
        Assert.Equal(
            [
                "blockdev-mirror: Must provide a valid bitmap name for 'bitmap' sync mode",
                "drive-mirror: sync mode 'bitmap' needs a target that is already in sync: use mode 'existing'",
                "blockdev-mirror: ok",
                "offset at READY: 196608",
            ],
            replies[1]);
    }
}
