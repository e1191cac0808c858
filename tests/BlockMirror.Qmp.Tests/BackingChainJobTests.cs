using System.Text.Json.Nodes;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// Backing chains made by qemu-img and qemu-io (data, zeroes and discards at every level), worked on by
/// the daemon's QMP commands: active commit while a client writes over NBD, intermediate commit,
/// drive-mirror sync=top into a new image and into an existing one (COW alignment), and bad requests.
/// qemu-img judges every result: compare against the guest view kept beside, check, info.
/// </summary>
public sealed class BackingChainJobTests : IDisposable
{
    const string Size = "4M";

    readonly TempDirectory _dir = new("blockmirror-chain-jobs-");

    public void Dispose() => _dir.Dispose();

    /// <summary>base &lt;- mid1 &lt;- ... &lt;- top, each level writing data, zeroes and discards over the last.</summary>
    async Task<string[]> MakeChainAsync(int depth, string? topClusterSize = null)
    {
        ExternalTool.Require("qemu-io");
        var paths = Enumerable.Range(0, depth).Select(i => _dir.File(i == 0 ? "base.qcow2" : i == depth - 1 ? "top.qcow2" : $"mid{i}.qcow2")).ToArray();
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", paths[0], Size);
        await QemuIoAsync(paths[0], "write -P 0x10 0 3M", "write -P 0x11 2M 512k");
        for (var i = 1; i < depth; i++)
        {
            var options = i == depth - 1 && topClusterSize is not null ? new[] { "-o", $"cluster_size={topClusterSize}" } : [];
            await ExternalTool.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", .. options, "-b", Path.GetFileName(paths[i - 1]), "-F", "qcow2", paths[i]]);
            var k = 0x20 + i * 0x10;
            await QemuIoAsync(paths[i],
                $"write -P 0x{k:x} {i * 256}k 100k",
                $"write -z {1024 + i * 128}k 64k",
                $"discard {2048 + i * 64}k 64k",
                $"write -P 0x{k + 1:x} {3072 + i * 96}k 36k");
        }

        return paths;
    }

    static Task<string> QemuIoAsync(string image, params string[] commands) => QemuIoWithFormatAsync(image, "qcow2", commands);

    static async Task<string> QemuIoWithFormatAsync(string image, string format, params string[] commands)
    {
        var output = await ExternalTool.RunCheckedAsync("qemu-io", [.. new[] { "-f", format }, .. commands.SelectMany(c => new[] { "-c", c }), image]);
        Assert.DoesNotContain("failed", output, StringComparison.OrdinalIgnoreCase);
        return output;
    }

    /// <summary>The guest's view of an image now, as a raw file to compare against later.</summary>
    async Task<string> SnapshotAsync(string image)
    {
        var raw = _dir.File(Path.GetFileNameWithoutExtension(image) + ".expected.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", image, raw);
        return raw;
    }

    /// <summary>Writes through the NBD export and into the expected view, the same commands.</summary>
    static async Task WriteBothAsync(string socket, string expected, params string[] commands)
    {
        if (commands.Length == 0)
        {
            return;
        }

        await QemuIoWithFormatAsync($"nbd+unix:///disk?socket={socket}", "raw", commands);
        await QemuIoWithFormatAsync(expected, "raw", commands);
    }

    static async Task AssertIdenticalAsync(string image, string expectedRaw)
    {
        var result = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", image, expectedRaw]);
        Assert.True(result.ExitCode == 0, $"qemu-img compare {image}: {result.StandardOutput}{result.StandardError}");
    }

    static async Task AssertCleanAsync(string image)
    {
        var check = await ExternalTool.RunAsync("qemu-img", ["check", image]);
        Assert.True(check.ExitCode == 0 && check.StandardOutput.Contains("No errors were found", StringComparison.Ordinal),
            $"qemu-img check {image}: {check.StandardOutput}{check.StandardError}");
    }

    static async Task<string?> BackingOfAsync(string image)
    {
        var info = JsonNode.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", "-U", image))!;
        return (string?)info["full-backing-filename"] ?? (string?)info["backing-filename"];
    }

    static JsonObject Open(string node, string path) => new()
    {
        ["driver"] = "qcow2", ["node-name"] = node, ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = path },
    };

    async Task<string> ExportAsync(DaemonHarness daemon, string node)
    {
        var socket = _dir.File("nbd.sock");
        await daemon.ExecuteAsync("nbd-server-start", new JsonObject { ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = socket } } });
        await daemon.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "exp0", ["node-name"] = node, ["name"] = "disk", ["writable"] = true });
        return socket;
    }

    [SkippableFact]
    public async Task Active_commit_while_a_client_writes_over_nbd_leaves_every_write_in_the_base_alone()
    {
        var chain = await MakeChainAsync(4);
        var expected = await SnapshotAsync(chain[^1]);
        await using (var daemon = new DaemonHarness())
        {
            await daemon.ExecuteAsync("blockdev-add", Open("top", chain[^1]));
            var socket = await ExportAsync(daemon, "top");

            // Slow enough that writes land while the job copies.
            await daemon.ExecuteAsync("block-commit", new JsonObject { ["job-id"] = "commit0", ["device"] = "top", ["speed"] = 2 << 20 });
            await WriteBothAsync(socket, expected, "write -P 0x71 64k 192k", "write -z 1088k 64k", "write -P 0x72 3000k 8k");
            await daemon.WaitAsync(e => e is BlockJobReadyEvent);
            // A discard through the export is advisory (the node keeps discard=ignore, as QEMU's default): zero with unmap instead.
            await WriteBothAsync(socket, expected, "write -P 0x73 4000k 64k", "write -z -u 2048k 128k");
            await daemon.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "commit0" });
            await daemon.WaitStatusAsync("commit0", JobStatus.Null);

            // After the switch the export writes the base itself.
            await WriteBothAsync(socket, expected, "write -P 0x74 1M 4k");
            Assert.Equal(
                ["JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:running", "JOB_STATUS_CHANGE:ready", "BLOCK_JOB_READY", "JOB_STATUS_CHANGE:waiting",
                 "JOB_STATUS_CHANGE:pending", "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"],
                daemon.Events.Select(DaemonHarness.Describe));
            Assert.All(daemon.Events.OfType<BlockJobCompletedEvent>(), e => Assert.Equal(JobType.Commit, e.Type));
        }

        await AssertCleanAsync(chain[0]);
        Assert.Null(await BackingOfAsync(chain[0]));
        await AssertIdenticalAsync(chain[0], expected);
    }

    [SkippableFact]
    public async Task Intermediate_commit_folds_the_middle_into_the_base_and_the_top_then_names_the_base()
    {
        var chain = await MakeChainAsync(4);
        var expected = await SnapshotAsync(chain[^1]);
        await using (var daemon = new DaemonHarness())
        {
            await daemon.ExecuteAsync("blockdev-add", Open("top", chain[^1]));
            await daemon.ExecuteAsync("block-commit", new JsonObject
            {
                ["job-id"] = "commit1", ["device"] = "top", ["top"] = chain[2], ["base"] = chain[0],
            });
            await daemon.WaitStatusAsync("commit1", JobStatus.Null);
            Assert.Null(daemon.Events.OfType<BlockJobCompletedEvent>().Single().Error);
            Assert.DoesNotContain(daemon.Events, e => e is BlockJobReadyEvent);
        }

        Assert.Equal(Path.GetFullPath(chain[0]), Path.GetFullPath(Path.Combine(_dir.Path, (await BackingOfAsync(chain[^1]))!)));
        await AssertCleanAsync(chain[0]);
        await AssertCleanAsync(chain[^1]);
        await AssertIdenticalAsync(chain[^1], expected);
    }

    /// <summary>
    /// iotest 040 TestReopenOverlay: base &lt;- mid1 &lt;- mid2 &lt;- top opened from top's header, so mid2 (the
    /// image above the committed layer) is a read-only backing file. QEMU reopens it read-write for the
    /// rewrite of its backing link and read-only again; the commit used to end with "Operation not permitted"
    /// and leave mid2 naming mid1.
    /// </summary>
    [SkippableFact]
    public async Task Committing_below_a_read_only_overlay_reopens_it_to_rewrite_its_backing_and_then_leaves_it_read_only()
    {
        var chain = await MakeChainAsync(4);
        var expected = await SnapshotAsync(chain[^1]);
        await using (var daemon = new DaemonHarness())
        {
            await daemon.ExecuteAsync("blockdev-add", Open("top", chain[^1]));
            var overlay = daemon.Daemon.Graph.FindNode("top")!.Backing!;
            Assert.True(overlay.ReadOnly);
            await daemon.ExecuteAsync("block-commit", new JsonObject { ["job-id"] = "commit1", ["device"] = "top", ["top"] = chain[1], ["base"] = chain[0] });
            await daemon.WaitStatusAsync("commit1", JobStatus.Null);

            Assert.Null(daemon.Events.OfType<BlockJobCompletedEvent>().Single().Error);
            Assert.True(overlay.ReadOnly);
            Assert.Equal(chain[0], overlay.Backing!.Driver.FileName);
        }

        Assert.Equal(chain[0], await BackingOfAsync(chain[2]));
        Assert.Equal(chain[2], await BackingOfAsync(chain[^1]));
        await AssertCleanAsync(chain[2]);
        await AssertIdenticalAsync(chain[^1], expected);
    }

    [SkippableFact]
    public async Task Drive_mirror_sync_top_copies_only_the_top_and_backs_the_new_image_with_the_source_base()
    {
        var chain = await MakeChainAsync(3);
        var copy = _dir.File("copy.qcow2");
        var expected = await DriveMirrorWhileWritingAsync(chain[^1], copy, "top",
            running: ["write -P 0x81 128k 64k", "write -z 3M 64k"], ready: [], pivoted: ["write -P 0x82 2M 4k"]);

        Assert.Equal(Path.GetFullPath(chain[1]), await BackingOfAsync(copy));
        await AssertCleanAsync(copy);
        await AssertIdenticalAsync(copy, expected);

        // Only the top's part was copied: no more data at the copy's own level than the top had, plus the writes.
        Assert.True(await OwnDataAsync(copy) <= await OwnDataAsync(chain[^1]) + (128 << 10),
            $"the copy holds {await OwnDataAsync(copy)} bytes of its own, the top {await OwnDataAsync(chain[^1])}");
    }

    [SkippableFact]
    public async Task Drive_mirror_sync_none_copies_only_new_writes_onto_an_image_backed_by_the_source()
    {
        var chain = await MakeChainAsync(2);
        var copy = _dir.File("copy.qcow2");
        var expected = await DriveMirrorWhileWritingAsync(chain[^1], copy, "none",
            running: ["write -P 0x91 256k 64k"], ready: ["write -P 0x92 1M 64k"], pivoted: ["write -P 0x93 2M 64k"]);

        // The copy is backed by the old top and holds the writes made since the start, nothing else.
        Assert.Equal(Path.GetFullPath(chain[^1]), await BackingOfAsync(copy));
        await AssertCleanAsync(copy);
        await AssertIdenticalAsync(copy, expected);
        Assert.Equal(3 * (64 << 10), await OwnDataAsync(copy));
    }

    /// <summary>
    /// drive-mirror of <paramref name="top"/> (exported over NBD) into a new qcow2 with the given sync, with
    /// writes while it runs, at READY and after the switch; returns the expected guest view.
    /// </summary>
    async Task<string> DriveMirrorWhileWritingAsync(string top, string copy, string sync, string[] running, string[] ready, string[] pivoted)
    {
        var expected = await SnapshotAsync(top);
        await using var daemon = new DaemonHarness();
        await daemon.ExecuteAsync("blockdev-add", Open("top", top));
        var socket = await ExportAsync(daemon, "top");
        await daemon.ExecuteAsync("drive-mirror", new JsonObject
        {
            ["job-id"] = "m0", ["device"] = "top", ["target"] = copy, ["sync"] = sync, ["format"] = "qcow2", ["node-name"] = "copy",
        });
        await WriteBothAsync(socket, expected, running);
        await daemon.WaitAsync(e => e is BlockJobReadyEvent);
        await WriteBothAsync(socket, expected, ready);
        await daemon.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m0" });
        await daemon.WaitStatusAsync("m0", JobStatus.Null);
        await WriteBothAsync(socket, expected, pivoted);
        return expected;
    }

    static async Task<long> OwnDataAsync(string image)
    {
        var map = JsonNode.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-U", image))!.AsArray();
        return map.Where(e => (int)e!["depth"]! == 0 && (bool)e["data"]!).Sum(e => (long)e!["length"]!);
    }

    [SkippableFact]
    public async Task An_existing_target_with_larger_clusters_gets_whole_clusters_so_its_backing_shows_no_stale_bytes()
    {
        // 4 KiB chunks into a target of 64 KiB clusters whose backing (the base, all 0xaa) opens only at
        // the switch: a chunk copied alone would leave the rest of its new cluster zero, not 0xaa.
        ExternalTool.Require("qemu-io");
        var basePath = _dir.File("base.qcow2");
        var top = _dir.File("top.qcow2");
        var target = _dir.File("target.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", basePath, Size);
        await QemuIoAsync(basePath, "write -P 0xaa 0 4M");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "base.qcow2", "-F", "qcow2", top);
        await QemuIoAsync(top, "write -P 0xbb 68k 4k", "write -P 0xbc 200k 4k", "write -P 0xbd 1028k 8k", "write -z 2052k 4k");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", "base.qcow2", "-F", "qcow2", target);
        var expected = await SnapshotAsync(top);
        await using (var daemon = new DaemonHarness())
        {
            await daemon.ExecuteAsync("blockdev-add", Open("top", top));
            await daemon.ExecuteAsync("drive-mirror", new JsonObject
            {
                ["job-id"] = "m1", ["device"] = "top", ["target"] = target, ["sync"] = "top", ["mode"] = "existing",
                ["format"] = "qcow2", ["granularity"] = 4096, ["node-name"] = "target",
            });
            await daemon.WaitAsync(e => e is BlockJobReadyEvent);
            await daemon.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m1" });
            await daemon.WaitStatusAsync("m1", JobStatus.Null);
            var nodes = (await daemon.ExecuteAsync("query-named-block-nodes"))!.AsArray();
            Assert.Equal(1, (int)nodes.Single(n => (string?)n!["node-name"] == "target")!["backing_file_depth"]!);
        }

        await AssertCleanAsync(target);
        await AssertIdenticalAsync(target, expected);
    }

    [SkippableFact]
    public async Task A_running_commit_holds_every_image_of_its_chain_and_a_cancel_puts_the_base_back_to_read_only()
    {
        var chain = await MakeChainAsync(3);
        var expected = await SnapshotAsync(chain[^1]);
        await using (var daemon = new DaemonHarness())
        {
            await daemon.ExecuteAsync("blockdev-add", Open("top", chain[^1]));
            var graph = daemon.Daemon.Graph;
            BlockMirror.Block.Graph.BlockNode Image(string path) =>
                graph.Nodes.Single(n => n.Driver.DriverName == "qcow2" && n.Driver.FileName == path);
            var mid = Image(chain[1]);
            var @base = Image(chain[0]);
            Assert.True(@base.ReadOnly);

            // Slow, so it is still running while the others try.
            await daemon.ExecuteAsync("block-commit", new JsonObject { ["job-id"] = "c0", ["device"] = "top", ["speed"] = 4096 });
            await daemon.WaitStatusAsync("c0", JobStatus.Running);
            Assert.False(@base.ReadOnly);
            foreach (var node in new[] { mid, @base })
            {
                var error = await daemon.ErrorAsync("drive-mirror", new JsonObject
                {
                    ["job-id"] = "m0", ["device"] = node.Name, ["target"] = _dir.File("copy.qcow2"), ["sync"] = "full",
                });
                // Backing files of the chain are no root nodes: QEMU's qmp_get_root_bs refuses them first.
                Assert.Contains("Need a root block node", error, StringComparison.Ordinal);
                Assert.False(File.Exists(_dir.File("copy.qcow2")));
            }

            await daemon.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "c0", ["force"] = true });
            await daemon.WaitStatusAsync("c0", JobStatus.Null);
            Assert.Contains(daemon.Events, e => e is BlockJobCancelledEvent);
            Assert.True(@base.ReadOnly);
            Assert.DoesNotContain(graph.Nodes, n => n.Driver.DriverName == "mirror_top");
        }

        // Cancelled before READY: the top still reads as before, through the whole chain.
        await AssertIdenticalAsync(chain[^1], expected);
        await AssertCleanAsync(chain[0]);
    }

    [SkippableFact]
    public async Task Bad_commit_and_replaces_requests_get_qemus_errors_and_change_nothing()
    {
        var chain = await MakeChainAsync(3);
        var other = _dir.File("other.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", other, Size);
        var roBase = _dir.File("ro-base.qcow2");
        var roTop = _dir.File("ro-top.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", roBase, Size);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "ro-base.qcow2", "-F", "qcow2", roTop);
        await using var daemon = new DaemonHarness();
        await daemon.ExecuteAsync("blockdev-add", Open("top", chain[^1]));
        await daemon.ExecuteAsync("blockdev-add", Open("other", other));

        // A base the user opened read-only (not one read-only only for being a backing file).
        var readOnlyBase = Open("ro-base", roBase).With("read-only", true);
        readOnlyBase["file"]!["read-only"] = true;
        await daemon.ExecuteAsync("blockdev-add", readOnlyBase);
        await daemon.ExecuteAsync("blockdev-add", Open("ro-top", roTop).With("backing", "ro-base"));
        var before = Snapshot(daemon);

        var cases = new (string Command, JsonObject Arguments, string Error)[]
        {
            ("block-commit", new() { ["device"] = "nope" }, "Device 'nope' not found"),
            ("block-commit", new() { ["device"] = "top", ["base-node"] = "other" }, "'other' is not in this backing file chain"),
            ("block-commit", new() { ["device"] = "top", ["base-node"] = "nope" }, "Cannot find device='' nor node-name='nope'"),
            ("block-commit", new() { ["device"] = "top", ["top-node"] = "top", ["base-node"] = "top" }, "cannot commit an image into itself"),
            ("block-commit", new() { ["device"] = "top", ["base"] = _dir.File("missing.qcow2") }, $"Can't find '{_dir.File("missing.qcow2")}' in the backing chain"),
            ("block-commit", new() { ["device"] = "top", ["top"] = _dir.File("missing.qcow2") }, $"Top image file {_dir.File("missing.qcow2")} not found"),
            ("block-commit", new() { ["device"] = "top", ["backing-file"] = "x.qcow2" }, "'backing-file' specified, but 'top' is the active layer"),
            ("block-commit", new() { ["device"] = "top", ["speed"] = -1 }, "Parameter 'speed' expects a non-negative value"),
            ("block-commit", new() { ["job-id"] = "c", ["device"] = "ro-top" }, "read-only"),
            ("blockdev-mirror", new() { ["job-id"] = "m", ["device"] = "top", ["target"] = "other", ["sync"] = "full", ["replaces"] = "nope" }, "Failed to find node with node-name='nope'"),
            ("blockdev-mirror", new() { ["job-id"] = "m", ["device"] = "top", ["target"] = "other", ["sync"] = "full", ["replaces"] = "ro-top" },
                "Cannot replace 'ro-top' by a node mirrored from 'top', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data"),
            ("drive-mirror", new() { ["job-id"] = "m", ["device"] = "top", ["target"] = _dir.File("new.qcow2"), ["sync"] = "full", ["replaces"] = "top" },
                "a node-name must be provided when replacing a named node of the graph"),
        };
        foreach (var (command, arguments, error) in cases)
        {
            var message = await daemon.ErrorAsync(command, arguments);
            Assert.Contains(error, message, StringComparison.Ordinal);
            Assert.Equal(before, Snapshot(daemon));
        }

        Assert.False(File.Exists(_dir.File("new.qcow2")));
        Assert.Empty(daemon.Events);
    }

    /// <summary>What a refused request must leave as it was: the nodes, their modes and backings, and the jobs.</summary>
    static string Snapshot(DaemonHarness daemon) =>
        string.Join("; ", daemon.Daemon.Graph.Nodes.OrderBy(n => n.Name, StringComparer.Ordinal)
            .Select(n => $"{n.Name}:{n.Driver.DriverName}:{(n.ReadOnly ? "ro" : "rw")}:{n.Backing?.Name}:{n.Parents.Count}"))
        + $" | jobs {daemon.Daemon.Jobs.Jobs.Count}";
}

static class JsonObjectExtensions
{
    public static JsonObject With(this JsonObject o, string key, JsonNode? value)
    {
        o[key] = value;
        return o;
    }
}
