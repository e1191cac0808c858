using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 040 (block-commit) ported to the daemon, each scenario run unchanged on qemu-storage-daemon
/// 7.2 and <c>blockmirror serve</c> (<see cref="IotestRun"/>). The chain is 040's: backing.img (raw) &lt;-
/// mid.img &lt;- test.img (qcow2), opened as nodes base, mid and top, top exported. Both daemons must give the
/// same events and replies, and leave the same base and the same backing chain (qemu-img info
/// --backing-chain); a committed base must hold the committed view (qemu-img compare with a copy made
/// before the job).
/// </summary>
public sealed class Iotest040Tests : IDisposable
{
    readonly TempDirectory _root = new("bm-iotest040-");

    public void Dispose() => _root.Dispose();

    /// <summary>040's setUp (TestSingleDrive; length 0 for TestActiveZeroLengthImage), and the views a commit must leave in the base.</summary>
    static Func<string, Task> SetUp(long length) => async dir =>
    {
        var half = length / 2;
        await QemuImages.CreateAsync($"{dir}/backing.img", $"{length}", length == 0 ? [] : [$"write -P 0xab 0 {half}"]);
        await ImageRecipes.Qcow2Async(dir, "mid.img", null, ["-b", $"{dir}/backing.img", "-F", "raw"], length == 0 ? [] : [$"write -P 0xef {half} {length - half}"]);
        await ImageRecipes.Qcow2Async(dir, "test.img", null, ["-b", $"{dir}/mid.img", "-F", "qcow2"], length == 0 ? [] : ["write -P 0x12 0 64k"]);
        await ImageRecipes.Qcow2Async(dir, "orphan.img", "1M", [], []);
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", $"{dir}/mid.img", $"{dir}/mid-view.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", $"{dir}/test.img", $"{dir}/test-view.raw");
    };

    /// <summary>Each layer as its own node (040 names them with backing.node-name; here each is a --blockdev of its own).</summary>
    static string[] Layers(string dir) =>
    [
        .. IotestRun.RawNode(dir, "base", "backing.img"),
        .. IotestRun.Qcow2Node(dir, "mid", "mid.img", backing: "base"),
        .. IotestRun.Qcow2Node(dir, "top", "test.img", backing: "mid"),
    ];

    /// <summary>The base must hold <paramref name="view"/> on both daemons, and both bases must be alike.</summary>
    static async Task AssertBaseHoldsAsync(IotestRun.Outcome qsd, IotestRun.Outcome ours, string view)
    {
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/{view}", $"{dir}/backing.img");
        }

        await IotestRun.AssertSameImageAsync(qsd, ours, "backing.img", "raw");
    }

    /// <summary>040 test_commit (by file name) and test_commit_node (by node name): mid goes into the base, test.img is rebased onto it.</summary>
    [SkippableTheory]
    [InlineData("test_commit", 1 << 20)]
    [InlineData("test_commit_node", 1 << 20)]
    [InlineData("test_commit", 0)]
    public async Task test_commit(string testCase, long length)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, SetUp(length), Layers, "top", async s =>
        {
            await s.RunAsync("block-commit", testCase == "test_commit_node"
                ? new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["top-node"] = "mid", ["base-node"] = "base" }
                : new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["top"] = $"{s.Dir}/mid.img", ["base"] = $"{s.Dir}/backing.img" });
            await s.WaitGoneAsync();
        });

        Assert.Contains("BLOCK_JOB_COMPLETED", qsd.Events);
        await AssertBaseHoldsAsync(qsd, ours, "mid-view.raw");
        await IotestRun.AssertBackingChainAsync(qsd, ours, "test.img", "DIR/backing.img (raw) <- DIR/test.img (qcow2) backing DIR/backing.img (raw)");
    }

    /// <summary>040 test_top_is_active (top given) and test_top_is_default_active (top left out): an active commit, completed at READY.</summary>
    [SkippableTheory]
    [InlineData("test_top_is_active", 1 << 20)]
    [InlineData("test_top_is_default_active", 1 << 20)]
    [InlineData("test_top_is_active", 0)]
    public async Task test_top_is_active(string testCase, long length)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, SetUp(length), Layers, "top", async s =>
        {
            var arguments = new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["base"] = $"{s.Dir}/backing.img" };
            if (testCase == "test_top_is_active")
            {
                arguments["top"] = $"{s.Dir}/test.img";
            }

            await s.RunAsync("block-commit", arguments);
            await s.CompleteAndWaitAsync();
            await s.LogExportedFileAsync();
        });

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, qsd.Events);
        Assert.Contains("exported: DIR/backing.img", qsd.Log);
        await AssertBaseHoldsAsync(qsd, ours, "test-view.raw");
    }

    /// <summary>040's refused requests: each gets QEMU's error class and words and starts no job.</summary>
    [SkippableTheory]
    [InlineData("test_device_not_found")]
    [InlineData("test_top_same_base")]
    [InlineData("test_top_invalid")]
    [InlineData("test_base_invalid")]
    [InlineData("test_top_node_invalid")]
    [InlineData("test_base_node_invalid")]
    [InlineData("test_top_path_and_node")]
    [InlineData("test_base_path_and_node")]
    [InlineData("test_top_and_base_reversed")]
    [InlineData("test_top_and_base_node_reversed")]
    [InlineData("test_top_node_in_wrong_chain")]
    [InlineData("test_set_speed_invalid")]
    public async Task Refused(string testCase)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, SetUp(1 << 20), Layers, "top", async s =>
        {
            var mid = $"{s.Dir}/mid.img";
            var backing = $"{s.Dir}/backing.img";
            if (testCase == "test_top_node_in_wrong_chain")
            {
                await s.RunAsync("blockdev-add", new JsonObject
                {
                    ["driver"] = "qcow2", ["node-name"] = "orphan", ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = $"{s.Dir}/orphan.img" },
                });
            }

            JsonObject arguments = testCase switch
            {
                "test_device_not_found" => new() { ["device"] = "nonexistent", ["top"] = mid },
                "test_top_same_base" => new() { ["device"] = "top", ["top"] = mid, ["base"] = mid },
                "test_top_invalid" => new() { ["device"] = "top", ["top"] = "badfile", ["base"] = backing },
                "test_base_invalid" => new() { ["device"] = "top", ["top"] = mid, ["base"] = "badfile" },
                "test_top_node_invalid" => new() { ["device"] = "top", ["top-node"] = "badfile", ["base-node"] = "base" },
                "test_base_node_invalid" => new() { ["device"] = "top", ["top-node"] = "mid", ["base-node"] = "badfile" },
                "test_top_path_and_node" => new() { ["device"] = "top", ["top-node"] = "mid", ["base-node"] = "base", ["top"] = mid },
                "test_base_path_and_node" => new() { ["device"] = "top", ["top-node"] = "mid", ["base-node"] = "base", ["base"] = backing },
                "test_top_and_base_reversed" => new() { ["device"] = "top", ["top"] = backing, ["base"] = mid },
                "test_top_and_base_node_reversed" => new() { ["device"] = "top", ["top-node"] = "base", ["base-node"] = "top" },
                "test_top_node_in_wrong_chain" => new() { ["device"] = "top", ["top-node"] = "orphan", ["base-node"] = "base" },
                "test_set_speed_invalid" => new() { ["device"] = "top", ["top"] = mid, ["base"] = backing, ["speed"] = -1 },
                _ => throw new ArgumentException(testCase),
            };
            arguments["job-id"] = "job0";
            await s.TryAsync("block-commit", arguments);
            s.Log.Add($"jobs: {(await s.Qmp.ExecuteAsync("query-block-jobs"))!.AsArray().Count}");
        }, sameEvents: false);

        Assert.Contains(qsd.Log, line => line.StartsWith("block-commit: ", StringComparison.Ordinal) && !line.EndsWith(": ok", StringComparison.Ordinal));
        Assert.Equal(["BLOCK_EXPORT_DELETED"], ours.Events);
        if (testCase == "test_set_speed_invalid")
        {
            // Deliberate difference (README): QEMU creates the job before it checks the speed, so a refused
            // request still shows the job being created and destroyed; we refuse before any job exists.
            Assert.Equal(["JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"], qsd.Events);
        }
        else
        {
            Assert.Equal(ours.Events, qsd.Events);
        }

        await IotestRun.AssertBackingChainAsync(qsd, ours, "test.img",
            "DIR/backing.img (raw) <- DIR/mid.img (qcow2) backing DIR/backing.img (raw) <- DIR/test.img (qcow2) backing DIR/mid.img (qcow2)");
    }

    /// <summary>
    /// 040 TestSetSpeed test_set_speed: the speed given to block-commit shows in query-block-jobs, a new one
    /// after block-job-set-speed; then the job is cancelled (a tiny speed keeps it from finishing first).
    /// </summary>
    [SkippableFact]
    public async Task test_set_speed()
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await SetUp(1 << 20)(dir);

            // Data in mid's first step too: a commit sleeps for its speed only before a step after a copy,
            // and with mid's data in its last step alone the job would end before the test acts.
            await ImageRecipes.QemuIoAsync($"{dir}/mid.img", "qcow2", ["write -P 0xee 0 64k"]);
        }, Layers, "top", async s =>
        {
            await s.RunAsync("block-commit", new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["top-node"] = "mid", ["base-node"] = "base", ["speed"] = 1024 });
            await s.LogJobAsync("device", "type", "speed");
            // Lower, not higher: a higher speed wakes the sleeping job (QEMU's block_job_set_speed), which then
            // copies its last step at once and ends before the cancel.
            await s.RunAsync("block-job-set-speed", new JsonObject { ["device"] = "job0", ["speed"] = 512 });
            await s.LogJobAsync("device", "type", "speed");
            await s.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
            await s.WaitGoneAsync();
        });

        Assert.Contains("query-block-jobs: device=\"job0\", type=\"commit\", speed=512", qsd.Log);
        Assert.Contains("BLOCK_JOB_CANCELLED", qsd.Events);
    }

    /// <summary>
    /// 040 TestReopenOverlay test_reopen_overlay: 0.img &lt;- 1.img &lt;- 2.img &lt;- 3.img, opened from 3.img's
    /// header (so 0, 1 and 2 are read-only backing files); committing 1.img into 0.img must reopen 2.img
    /// read-write to rewrite its backing file name and format, and drop 1.img from the chain.
    /// </summary>
    [SkippableFact]
    public async Task test_reopen_overlay()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await ImageRecipes.Qcow2Async(dir, "0.img", "1M", [], []);
            for (var i = 1; i <= 3; i++)
            {
                await ImageRecipes.Qcow2Async(dir, $"{i}.img", null, ["-b", $"{dir}/{i - 1}.img", "-F", "qcow2"], i == 1 ? ["write -P 0xab 0 128K"] : []);
            }

            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", $"{dir}/1.img", $"{dir}/1-view.raw");
        }, dir => IotestRun.Qcow2Node(dir, "drive0", "3.img"), "drive0", async s =>
        {
            await s.RunAsync("block-commit", new JsonObject { ["job-id"] = "job0", ["device"] = "drive0", ["top"] = $"{s.Dir}/1.img", ["base"] = $"{s.Dir}/0.img" });
            await s.WaitGoneAsync();
            var nodes = (await s.Qmp.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
            s.Log.Add("nodes: " + string.Join(", ", nodes.Select(n => $"{(string?)n!["file"]} ro={(bool)n["ro"]!}").Order(StringComparer.Ordinal)).Replace(s.Dir, "DIR", StringComparison.Ordinal));
        });

        Assert.Equal([
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending",
            "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"], qsd.Events);
        await IotestRun.AssertBackingChainAsync(qsd, ours, "3.img",
            "DIR/0.img (qcow2) <- DIR/2.img (qcow2) backing DIR/0.img (qcow2) <- DIR/3.img (qcow2) backing DIR/2.img (qcow2)");
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/1-view.raw", $"{dir}/0.img", "raw", "qcow2");
            Assert.Contains("No errors were found on the image.", await ExternalTool.RunCheckedAsync("qemu-img", "check", $"{dir}/2.img"));
        }

        await IotestRun.AssertSameImageAsync(qsd, ours, "0.img");
    }

    /// <summary>
    /// 040 TestRelativePaths: dir1/backing.img &lt;- dir2/mid.img &lt;- dir2/dir3/test.img, each header naming
    /// its backing relatively ("../mid.img", "../dir1/backing.img"). test_commit commits mid into the base by
    /// those names; the top's header then names the base as QEMU combines the names (relative to the overlay's
    /// name, nothing normalised). test_top_same_base and test_top_invalid are refused alike.
    /// </summary>
    [SkippableTheory]
    [InlineData("test_commit")]
    [InlineData("test_top_same_base")]
    [InlineData("test_top_invalid")]
    public async Task TestRelativePaths(string testCase)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            Directory.CreateDirectory($"{dir}/dir1");
            Directory.CreateDirectory($"{dir}/dir2/dir3");
            await QemuImages.CreateAsync($"{dir}/dir1/backing.img", "1M", "write -P 0xab 0 512k");
            await ImageRecipes.Qcow2Async(dir, "dir2/mid.img", null, ["-b", $"{dir}/dir1/backing.img", "-F", "raw"], ["write -P 0xef 512k 512k"]);
            await ImageRecipes.Qcow2Async(dir, "dir2/dir3/test.img", null, ["-b", $"{dir}/dir2/mid.img", "-F", "qcow2"], []);
            await ExternalTool.RunCheckedAsync("qemu-img", "rebase", "-u", "-b", "../dir1/backing.img", "-F", "raw", $"{dir}/dir2/mid.img");
            await ExternalTool.RunCheckedAsync("qemu-img", "rebase", "-u", "-b", "../mid.img", "-F", "qcow2", $"{dir}/dir2/dir3/test.img");
            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", $"{dir}/dir2/mid.img", $"{dir}/mid-view.raw");
        }, dir => IotestRun.Qcow2Node(dir, "drive0", "dir2/dir3/test.img"), "drive0", async s =>
        {
            JsonObject arguments = testCase switch
            {
                "test_commit" => new() { ["top"] = "../mid.img", ["base"] = "../dir1/backing.img" },
                "test_top_same_base" => new() { ["top"] = "../mid.img", ["base"] = "../mid.img" },
                _ => new() { ["top"] = "badfile", ["base"] = "../dir1/backing.img" },
            };
            arguments["job-id"] = "job0";
            arguments["device"] = "drive0";
            var reply = await s.TryAsync("block-commit", arguments);
            if (reply.ContainsKey("return"))
            {
                await s.WaitGoneAsync();
            }
        });

        if (testCase == "test_commit")
        {
            await IotestRun.AssertBackingChainAsync(qsd, ours, "dir2/dir3/test.img",
                "DIR/dir2/dir3/../../dir1/backing.img (raw) <- DIR/dir2/dir3/test.img (qcow2) backing DIR/dir2/dir3/../../dir1/backing.img (raw)");
            foreach (var dir in new[] { qsd.Dir, ours.Dir })
            {
                await QemuImages.AssertIdenticalAsync($"{dir}/mid-view.raw", $"{dir}/dir1/backing.img");
            }
        }
        else
        {
            Assert.Contains("GenericError", qsd.Log.Single(), StringComparison.Ordinal);
            await IotestRun.AssertBackingChainAsync(qsd, ours, "dir2/dir3/test.img",
                "DIR/dir2/dir3/../../dir1/backing.img (raw) <- DIR/dir2/dir3/../mid.img (qcow2) backing ../dir1/backing.img (raw) <- DIR/dir2/dir3/test.img (qcow2) backing ../mid.img (qcow2)");
        }
    }
}
