using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 041 (mirror) ported to the daemon, each scenario run unchanged on qemu-storage-daemon 7.2
/// and <c>blockmirror serve</c> (<see cref="IotestRun"/>): the source test.img is a qcow2 over a raw
/// backing.img, opened as node drive0 (with its chain from the header) and exported writable. Both must
/// give the same events and replies, and leave the same images; a completed or soft-cancelled copy must
/// equal the source. The iotest's variants (TestSingleDrive, TestSingleBlockdev and their zero-length and
/// unaligned-length forms) are the theories' first parameter. The iotest's pauses with time.sleep are
/// replaced by a speed limit (a job that cannot finish before the test acts), never by timing.
/// </summary>
public sealed class Iotest041Tests : IDisposable
{
    readonly TempDirectory _root = new("bm-iotest041-");

    public void Dispose() => _root.Dispose();

    /// <summary>Every variant of 041's TestSingleDrive family.</summary>
    public static TheoryData<string> AllVariants =>
    [
        "TestSingleDrive", "TestSingleBlockdev", "TestSingleDriveZeroLength", "TestSingleBlockdevZeroLength",
        "TestSingleDriveUnalignedLength", "TestSingleBlockdevUnalignedLength",
    ];

    /// <summary>The variants with data: a zero-length job is READY at once, so nothing can happen before it.</summary>
    public static TheoryData<string> SizedVariants => ["TestSingleDrive", "TestSingleBlockdev", "TestSingleDriveUnalignedLength", "TestSingleBlockdevUnalignedLength"];

    /// <summary>The drive-mirror variants with data (041 drops its existing-target cases from the others).</summary>
    public static TheoryData<string> DriveVariants => ["TestSingleDrive", "TestSingleDriveUnalignedLength"];

    /// <summary>Runs a script on a variant's images and nodes (041's setUp); the script is given the variant's command.</summary>
    Task<(IotestRun.Outcome Qsd, IotestRun.Outcome Ours)> OnVariantAsync(string variant, Func<IotestSession, string, Task> script,
        Func<string, Task>? moreSetUp = null)
    {
        var (command, length) = Variant(variant);
        return IotestRun.OnBothAsync(_root, async dir =>
        {
            await SingleSetUp(command, length)(dir);
            if (moreSetUp is not null)
            {
                await moreSetUp(dir);
            }
        }, SingleBlockdevs, "drive0", s => script(s, command));
    }

    /// <summary>041's variants: the command and the image length.</summary>
    static (string Command, long Length) Variant(string name) => name switch
    {
        "TestSingleDrive" => ("drive-mirror", 1 << 20),
        "TestSingleBlockdev" => ("blockdev-mirror", 1 << 20),
        "TestSingleDriveZeroLength" => ("drive-mirror", 0),
        "TestSingleBlockdevZeroLength" => ("blockdev-mirror", 0),
        "TestSingleDriveUnalignedLength" => ("drive-mirror", 1025 * 1024),
        "TestSingleBlockdevUnalignedLength" => ("blockdev-mirror", 1025 * 1024),
        _ => throw new ArgumentException(name),
    };

    /// <summary>041's setUp: backing.img (raw, with data) under test.img (qcow2, with data of its own); for blockdev-mirror also target.img, backed by backing.img.</summary>
    static Func<string, Task> SingleSetUp(string command, long length) => async dir =>
    {
        var half = length / 2;
        await QemuImages.CreateAsync($"{dir}/backing.img", $"{length}", length == 0 ? [] : [$"write -P 0x5a 0 {half}", $"write -P 0x5b {half} {length - half}"]);
        await ImageRecipes.Qcow2Async(dir, "test.img", null, ["-b", $"{dir}/backing.img", "-F", "raw"], length == 0 ? [] : ["write -P 0x6c 4096 8192", $"write -z {half} 4096"]);
        if (command == "blockdev-mirror")
        {
            await ImageRecipes.Qcow2Async(dir, "target.img", null, ["-b", $"{dir}/backing.img", "-F", "raw"], []);
        }
    };

    static string[] SingleBlockdevs(string dir) => IotestRun.Qcow2Node(dir, "drive0", "test.img");

    /// <summary>The mirror request of a variant: drive-mirror onto DIR/target.img, or blockdev-mirror onto node1 (added first).</summary>
    static async Task<JsonObject> MirrorAsync(IotestSession s, string command, JsonObject? more = null)
    {
        var arguments = new JsonObject { ["job-id"] = "job0", ["device"] = "drive0", ["sync"] = "full" };
        if (command == "blockdev-mirror")
        {
            await s.RunAsync("blockdev-add", new JsonObject
            {
                ["driver"] = "qcow2", ["node-name"] = "node1", ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = $"{s.Dir}/target.img" },
            });
            arguments["target"] = "node1";
        }
        else
        {
            arguments["target"] = $"{s.Dir}/target.img";
        }

        foreach (var (key, value) in more ?? [])
        {
            arguments[key] = value?.DeepClone();
        }

        return await s.TryAsync(command, arguments);
    }

    /// <summary>The guest's view of the source must be the target's: qemu-img compare in each directory, and the two targets alike.</summary>
    static async Task AssertTargetIsSourceAsync(IotestRun.Outcome qsd, IotestRun.Outcome ours)
    {
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/test.img", $"{dir}/target.img", "qcow2", "qcow2");
        }

        await IotestRun.AssertSameImageAsync(qsd, ours, "target.img");
    }

    /// <summary>041 test_complete: sync=full, completed once READY; the export then serves target.img.</summary>
    [SkippableTheory]
    [MemberData(nameof(AllVariants))]
    public async Task test_complete(string variant)
    {
        var (qsd, ours) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command);
            await s.CompleteAndWaitAsync();
            await s.LogExportedFileAsync();
        });

        Assert.Contains("exported: DIR/target.img", qsd.Log);
        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>041 test_cancel: a forced cancel before READY (a speed limit keeps the job from getting there); the export stays on test.img.</summary>
    [SkippableTheory]
    [MemberData(nameof(SizedVariants))]
    public async Task test_cancel(string variant)
    {
        var (qsd, _) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command, new JsonObject { ["speed"] = 4096 });
            await s.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0", ["force"] = true });
            await s.WaitGoneAsync();
            await s.LogExportedFileAsync();
        });

        Assert.Contains("exported: DIR/test.img", qsd.Log);
        Assert.Contains("BLOCK_JOB_CANCELLED", qsd.Events);
    }

    /// <summary>041 test_cancel_after_ready: a soft cancel once READY leaves a full copy and the export on test.img.</summary>
    [SkippableTheory]
    [MemberData(nameof(AllVariants))]
    public async Task test_cancel_after_ready(string variant)
    {
        var (qsd, ours) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command);
            await s.WaitReadyAsync();
            await s.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
            await s.WaitGoneAsync();
            await s.LogExportedFileAsync();
        });

        Assert.Contains("exported: DIR/test.img", qsd.Log);
        Assert.Contains("BLOCK_JOB_COMPLETED", qsd.Events);
        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>
    /// 041 test_pause: a paused job makes no progress (two queries show one offset), and once resumed it
    /// completes. A speed limit holds the job before READY; it is lifted before the resume.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(SizedVariants))]
    public async Task test_pause(string variant)
    {
        var (qsd, ours) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command, new JsonObject { ["speed"] = 4096 });
            await s.RunAsync("block-job-pause", new JsonObject { ["device"] = "job0" });
            await s.WaitStatusAsync("paused");
            var first = (await s.Qmp.ExecuteAsync("query-block-jobs"))![0]!["offset"]!.GetValue<long>();
            var second = (await s.Qmp.ExecuteAsync("query-block-jobs"))![0]!["offset"]!.GetValue<long>();
            s.Log.Add($"offset unchanged while paused: {first == second}");
            await s.LogJobAsync("paused", "status", "speed");
            await s.RunAsync("block-job-set-speed", new JsonObject { ["device"] = "job0", ["speed"] = 0 });
            await s.RunAsync("block-job-resume", new JsonObject { ["device"] = "job0" });
            await s.CompleteAndWaitAsync();
        });

        Assert.Contains("offset unchanged while paused: True", qsd.Log);
        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>041 test_small_buffer: a buf-size of 4 KiB, below the granularity, is rounded up and the mirror completes.</summary>
    [SkippableTheory]
    [MemberData(nameof(AllVariants))]
    public async Task test_small_buffer(string variant)
    {
        var (qsd, ours) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command, new JsonObject { ["buf-size"] = 4096 });
            await s.CompleteAndWaitAsync();
        });

        Assert.All(qsd.Log, line => Assert.EndsWith(": ok", line, StringComparison.Ordinal));
        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>041 test_small_buffer2: an existing target with 1 MiB clusters (one cluster for the disk) and a buf-size of 64 KiB.</summary>
    [SkippableTheory]
    [MemberData(nameof(DriveVariants))]
    public async Task test_small_buffer2(string variant)
    {
        var (qsd, ours) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command, new JsonObject { ["buf-size"] = 65536, ["mode"] = "existing" });
            await s.CompleteAndWaitAsync();
        }, dir => ImageRecipes.Qcow2Async(dir, "target.img", null, ["-o", $"cluster_size={1 << 20},size={Variant(variant).Length}"], []));

        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>041 test_large_cluster: an existing target with 1 MiB clusters backed by backing.img, so chunks are copied with their whole cluster.</summary>
    [SkippableTheory]
    [MemberData(nameof(DriveVariants))]
    public async Task test_large_cluster(string variant)
    {
        var (qsd, ours) = await OnVariantAsync(variant, async (s, command) =>
        {
            await MirrorAsync(s, command, new JsonObject { ["mode"] = "existing" });
            await s.CompleteAndWaitAsync();
        }, dir => ImageRecipes.Qcow2Async(dir, "target.img", null, ["-o", $"cluster_size={1 << 20}", "-b", $"{dir}/backing.img", "-F", "raw"], []));

        await AssertTargetIsSourceAsync(qsd, ours);
        await IotestRun.AssertBackingChainAsync(qsd, ours, "target.img", "DIR/backing.img (raw) <- DIR/target.img (qcow2) backing DIR/backing.img (raw)");
    }

    /// <summary>041 test_image_not_found and test_device_not_found: refused with QEMU's words, no job.</summary>
    [SkippableTheory]
    [InlineData("TestSingleDrive")]
    [InlineData("TestSingleBlockdev")]
    public async Task test_image_not_found_and_test_device_not_found(string variant)
    {
        var (qsd, _) = await OnVariantAsync(variant, async (s, command) =>
        {
            if (command == "drive-mirror")
            {
                await s.TryAsync(command, new JsonObject { ["device"] = "drive0", ["job-id"] = "job0", ["sync"] = "full", ["mode"] = "existing", ["target"] = $"{s.Dir}/target.img" });
            }

            await s.TryAsync(command, new JsonObject { ["device"] = "nonexistent", ["job-id"] = "job0", ["sync"] = "full", ["target"] = command == "drive-mirror" ? $"{s.Dir}/target.img" : "drive0" });
        });

        Assert.All(qsd.Log, line => Assert.Contains("GenericError", line, StringComparison.Ordinal));
        Assert.Equal(["BLOCK_EXPORT_DELETED"], qsd.Events);
    }

    /// <summary>
    /// 041 TestMirrorNoBacking: the existing target names the source's backing file; the copy of the
    /// guest's view completes (test_complete) or is soft-cancelled once READY (test_cancel), and the target's
    /// header still names backing.img.
    /// </summary>
    [SkippableTheory]
    [InlineData("test_complete")]
    [InlineData("test_cancel")]
    public async Task TestMirrorNoBacking(string testCase)
    {
        const long length = 2 << 20;
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await SingleSetUp("drive-mirror", length)(dir);
            await ImageRecipes.Qcow2Async(dir, "target.img", null, ["-b", $"{dir}/backing.img", "-F", "raw"], []);
        }, SingleBlockdevs, "drive0", async s =>
        {
            await MirrorAsync(s, "drive-mirror", new JsonObject { ["mode"] = "existing" });
            if (testCase == "test_complete")
            {
                await s.CompleteAndWaitAsync();
            }
            else
            {
                await s.WaitReadyAsync();
                await s.RunAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
                await s.WaitGoneAsync();
            }
        });

        await AssertTargetIsSourceAsync(qsd, ours);
        await IotestRun.AssertBackingChainAsync(qsd, ours, "target.img", "DIR/backing.img (raw) <- DIR/target.img (qcow2) backing DIR/backing.img (raw)");
    }

    /// <summary>041 TestMirrorNoBacking test_large_cluster: the target's clusters are as large as the disk and its backing (target-backing.img) holds nothing.</summary>
    [SkippableFact]
    public async Task TestMirrorNoBacking_test_large_cluster()
    {
        const long length = 2 << 20;
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await SingleSetUp("drive-mirror", length)(dir);
            await ImageRecipes.Qcow2Async(dir, "target-backing.img", $"{length}", [], []);
            await ImageRecipes.Qcow2Async(dir, "target.img", null, ["-o", $"cluster_size={length}", "-b", $"{dir}/target-backing.img", "-F", "qcow2"], []);
        }, SingleBlockdevs, "drive0", async s =>
        {
            await MirrorAsync(s, "drive-mirror", new JsonObject { ["mode"] = "existing" });
            await s.CompleteAndWaitAsync();
        });

        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>041 TestMirrorResized: test.img grown to 2 MiB over a 1 MiB backing; sync=top (test_complete_top) or full (test_complete_full) onto a new target.</summary>
    [SkippableTheory]
    [InlineData("test_complete_top", "top")]
    [InlineData("test_complete_full", "full")]
    public async Task TestMirrorResized(string testCase, string sync)
    {
        Assert.StartsWith("test_complete_", testCase, StringComparison.Ordinal);
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await SingleSetUp("drive-mirror", 1 << 20)(dir);
            await ExternalTool.RunCheckedAsync("qemu-img", "resize", "-f", "qcow2", $"{dir}/test.img", "2M");
        }, SingleBlockdevs, "drive0", async s =>
        {
            await MirrorAsync(s, "drive-mirror", new JsonObject { ["sync"] = sync });
            await s.CompleteAndWaitAsync();
        });

        await AssertTargetIsSourceAsync(qsd, ours);
        var chain = await IotestRun.BackingChainAsync(qsd.Dir, "target.img");
        Assert.Equal(chain, await IotestRun.BackingChainAsync(ours.Dir, "target.img"));
    }

    /// <summary>
    /// 041 TestReadErrors and TestWriteErrors: the source's backing file (read errors) or the target (write
    /// errors) sits under a blkdebug node whose inline inject-error rule fails the first request covering
    /// sector 2048 (1 MiB) once with EIO. 041 writes these rules in a blkdebug config file with set-state
    /// rules; the inline rule (no states) makes the same single failure on both daemons. report fails the
    /// job; ignore reports the error and goes on to READY; stop pauses the job with io-status "failed"
    /// until it is resumed. Whatever goes on completes into a full copy.
    /// </summary>
    [SkippableTheory]
    [InlineData("test_report_read", "read", "report")]
    [InlineData("test_ignore_read", "read", "ignore")]
    [InlineData("test_stop_read", "read", "stop")]
    [InlineData("test_report_write", "write", "report")]
    [InlineData("test_ignore_write", "write", "ignore")]
    [InlineData("test_stop_write", "write", "stop")]
    public async Task TestReadErrors_and_TestWriteErrors(string testCase, string operation, string policy)
    {
        Assert.EndsWith(operation, testCase, StringComparison.Ordinal);
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await QemuImages.CreateAsync($"{dir}/backing.img", "2M", "write -P 0x11 0 2M");
            await ImageRecipes.Qcow2Async(dir, "test.img", null, ["-b", $"{dir}/backing.img", "-F", "raw"], [$"write -P 0x22 {(1 << 20) + 65536} 512"]);
            await QemuImages.CreateAsync($"{dir}/target.raw", "2M");
        }, dir => ErrorBlockdevs(dir, operation), "drive0", async s =>
        {
            await s.RunAsync("blockdev-mirror", new JsonObject
            {
                ["job-id"] = "job0", ["device"] = "drive0", ["target"] = "target", ["sync"] = "full",
                [operation == "read" ? "on-source-error" : "on-target-error"] = policy,
            });
            if (policy == "stop")
            {
                await s.WaitStatusAsync("paused");
                await s.LogJobAsync("status", "paused", "io-status");
                await s.RunAsync("block-job-resume", new JsonObject { ["device"] = "job0" });
            }

            if (policy == "report")
            {
                await s.WaitGoneAsync();
            }
            else
            {
                await s.CompleteAndWaitAsync();
            }
        });

        Assert.Contains($"BLOCK_JOB_ERROR {operation} {policy}", qsd.Events);
        if (policy == "report")
        {
            Assert.Contains("BLOCK_JOB_COMPLETED error: Input/output error", qsd.Events);
            return;
        }

        Assert.DoesNotContain(qsd.Events, e => e.StartsWith("BLOCK_JOB_COMPLETED error", StringComparison.Ordinal));
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/test.img", $"{dir}/target.raw", "qcow2", "raw");
        }
    }

    /// <summary>
    /// The nodes of the error tests: test.img over its backing (the backing's file under blkdebug for read
    /// errors), and a raw target (its file under blkdebug for write errors). The rule names the sector; QEMU
    /// arms a read_aio (write_aio) rule at the raw driver's first read (write) and fails the next request
    /// covering the sector, blockmirror's blkdebug fails the first read (write) covering it: with data at
    /// every byte both fail the copy of the chunk at 1 MiB, once.
    /// </summary>
    static string[] ErrorBlockdevs(string dir, string operation)
    {
        static string Debug(string node, string image, string @event) => new JsonObject
        {
            ["driver"] = "blkdebug", ["node-name"] = node, ["image"] = image,
            ["inject-error"] = new JsonArray(new JsonObject { ["event"] = @event, ["errno"] = 5, ["sector"] = 2048, ["once"] = true }),
        }.ToJsonString();

        var read = operation == "read";
        return
        [
            "--blockdev", $"driver=file,node-name=backing-file,filename={dir}/backing.img",
            .. read ? (string[])["--blockdev", Debug("backing-debug", "backing-file", "read_aio")] : [],
            "--blockdev", $"driver=raw,node-name=backing,file={(read ? "backing-debug" : "backing-file")}",
            .. IotestRun.Qcow2Node(dir, "drive0", "test.img", backing: "backing"),
            "--blockdev", $"driver=file,node-name=target-file,filename={dir}/target.raw",
            .. read ? [] : (string[])["--blockdev", Debug("target-debug", "target-file", "write_aio")],
            "--blockdev", $"driver=raw,node-name=target,file={(read ? "target-file" : "target-debug")}",
        ];
    }

    /// <summary>
    /// 041 TestReplaces test_replace_filter, with blkdebug as the filter (041 stacks copy-on-read filters,
    /// which blockmirror does not have): the device is a blkdebug node over the image, and replaces names the
    /// image under it. At completion the filter filters the target. Then the refusals around it: replacing a
    /// node the source does not reach through filters, and mirroring a node that is not a root.
    /// </summary>
    [SkippableFact]
    public async Task TestReplaces_test_replace_filter()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await SingleSetUp("blockdev-mirror", 1 << 20)(dir);
            await ImageRecipes.Qcow2Async(dir, "other.img", "1M", [], []);
        }, dir =>
        [
            .. SingleBlockdevs(dir), "--blockdev", "driver=blkdebug,node-name=filter0,image=drive0",
            .. IotestRun.Qcow2Node(dir, "target", "target.img"), .. IotestRun.Qcow2Node(dir, "other", "other.img"),
        ], "filter0", async s =>
        {
            await s.TryAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "drive0", ["target"] = "target", ["sync"] = "full" });
            await s.TryAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "filter0", ["target"] = "target", ["sync"] = "full", ["replaces"] = "drive0-file" });
            await s.TryAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "filter0", ["target"] = "target", ["sync"] = "full", ["replaces"] = "other" });
            await s.TryAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "filter0", ["target"] = "target", ["sync"] = "full", ["replaces"] = "nope" });
            await s.RunAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "filter0", ["target"] = "target", ["sync"] = "full", ["replaces"] = "drive0" });
            await s.CompleteAndWaitAsync();
            var nodes = (await s.Qmp.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
            var filter = nodes.Single(n => (string?)n!["node-name"] == "filter0")!;
            // Only the end: QEMU names a blkdebug node "blkdebug::" and its child's file, blockmirror the file alone.
            s.Log.Add($"filter0 filters target.img: {((string?)filter["file"])!.EndsWith($"{s.Dir}/target.img", StringComparison.Ordinal)}");
        });

        Assert.Equal(
        [
            "blockdev-mirror: GenericError: Need a root block node",
            "blockdev-mirror: GenericError: Cannot replace 'drive0-file' by a node mirrored from 'filter0', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data",
            "blockdev-mirror: GenericError: Cannot replace 'other' by a node mirrored from 'filter0', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data",
            "blockdev-mirror: GenericError: Failed to find node with node-name='nope'",
            "blockdev-mirror: ok", "block-job-complete: ok", "filter0 filters target.img: True",
        ], qsd.Log);
        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>
    /// Not a 041 case (041 gives every target the source's size): a target of another size is accepted by
    /// blockdev-mirror and drive-mirror (mode existing), and the job fails at once with QEMU's error in its
    /// BLOCK_JOB_COMPLETED, writing nothing.
    /// </summary>
    [SkippableTheory]
    [InlineData("blockdev-mirror")]
    [InlineData("drive-mirror")]
    public async Task Source_and_target_sizes_differ(string command)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await SingleSetUp("drive-mirror", 1 << 20)(dir);
            await ImageRecipes.Qcow2Async(dir, "target.img", "2M", [], ["write -P 0x77 0 64k"]);
        }, SingleBlockdevs, "drive0", async s =>
        {
            await MirrorAsync(s, command, command == "drive-mirror" ? new JsonObject { ["mode"] = "existing" } : null);
            await s.WaitGoneAsync();
        });

        Assert.Equal(
        [
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE aborting",
            "BLOCK_JOB_COMPLETED error: Source and target image have different sizes",
            "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
        ], qsd.Events);
        await IotestRun.AssertSameImageAsync(qsd, ours, "target.img");
    }

    /// <summary>
    /// 041 TestUnbackedSource: a qcow2 source with no backing file (node drive0), mirrored onto a new target
    /// with sync full, top or none (test_absolute_paths_*), onto an existing target holding other data
    /// (test_existing_full) or onto a target node (test_blockdev_full). A sync=none target is backed by the
    /// source itself, so its view is the source's too.
    /// </summary>
    [SkippableTheory]
    [InlineData("test_absolute_paths_full")]
    [InlineData("test_absolute_paths_top")]
    [InlineData("test_absolute_paths_none")]
    [InlineData("test_existing_full")]
    [InlineData("test_blockdev_full")]
    public async Task TestUnbackedSource(string testCase)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await ImageRecipes.Qcow2Async(dir, "test.img", "2M", [], ["write -P 0x31 0 768k", "write -z 1M 64k", "write -P 0x32 1536k 4k"]);
            if (testCase is "test_existing_full" or "test_blockdev_full")
            {
                await ImageRecipes.Qcow2Async(dir, "target.img", "2M", [], ["write -P 42 0 64k"]);
            }
        }, SingleBlockdevs, "drive0", async s =>
        {
            var arguments = new JsonObject { ["job-id"] = "job0", ["device"] = "drive0", ["target"] = $"{s.Dir}/target.img" };
            switch (testCase)
            {
                case "test_existing_full":
                    arguments["sync"] = "full";
                    arguments["mode"] = "existing";
                    break;
                case "test_blockdev_full":
                    await s.RunAsync("blockdev-add", new JsonObject
                    {
                        ["driver"] = "qcow2", ["node-name"] = "target", ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = $"{s.Dir}/target.img" },
                    });
                    arguments["target"] = "target";
                    arguments["sync"] = "full";
                    break;
                default:
                    arguments["sync"] = testCase["test_absolute_paths_".Length..];
                    arguments["mode"] = "absolute-paths";
                    break;
            }

            await s.RunAsync(testCase == "test_blockdev_full" ? "blockdev-mirror" : "drive-mirror", arguments);
            await s.CompleteAndWaitAsync();
        });

        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/test.img", $"{dir}/target.img", "qcow2", "qcow2");
        }

        var chain = await IotestRun.BackingChainAsync(qsd.Dir, "target.img");
        Assert.Equal(chain, await IotestRun.BackingChainAsync(ours.Dir, "target.img"));
        Assert.Equal(testCase == "test_absolute_paths_none" ? "DIR/test.img (qcow2) <- DIR/target.img (qcow2) backing DIR/test.img (qcow2)" : "DIR/target.img (qcow2)", chain);
    }

    /// <summary>041 TestGranularity test_granularity: a fully written 4 MiB disk (10 MiB in 041) mirrored with 8 KiB chunks reaches READY, not an error, and completes.</summary>
    [SkippableFact]
    public async Task TestGranularity_test_granularity()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            await ImageRecipes.Qcow2Async(dir, "test.img", "4M", [], ["write -P 0x41 0 4M"]);
        }, SingleBlockdevs, "drive0", async s =>
        {
            await s.RunAsync("drive-mirror", new JsonObject
            {
                ["job-id"] = "job0", ["device"] = "drive0", ["sync"] = "full", ["target"] = $"{s.Dir}/target.img", ["mode"] = "absolute-paths", ["granularity"] = 8192,
            });
            await s.CompleteAndWaitAsync();
        });

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, qsd.Events);
        await AssertTargetIsSourceAsync(qsd, ours);
    }

    /// <summary>
    /// 041 TestOrphanedSource: null-co nodes no device uses. test_success mirrors src onto dest and
    /// completes; test_failing_permissions is refused onto a read-only node with QEMU's "Block node is
    /// read-only". Deliberate difference (README): QEMU creates the job before its permission check, so its
    /// refusal also shows JOB_STATUS_CHANGE created and null; we refuse before any job exists.
    /// </summary>
    [SkippableTheory]
    [InlineData("test_success")]
    [InlineData("test_failing_permissions")]
    public async Task TestOrphanedSource(string testCase)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, _ => Task.CompletedTask, _ =>
        [
            "--blockdev", "driver=null-co,node-name=src,size=1048576", "--blockdev", "driver=null-co,node-name=dest,size=1048576",
            "--blockdev", "driver=null-co,node-name=dest-ro,size=1048576,read-only=on", "--blockdev", "driver=null-co,node-name=exported,size=1048576",
        ], "exported", async s =>
        {
            var target = testCase == "test_success" ? "dest" : "dest-ro";
            var reply = await s.TryAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job", ["device"] = "src", ["sync"] = "full", ["target"] = target });
            if (reply.ContainsKey("return"))
            {
                await s.CompleteAndWaitAsync("job");
            }
        }, sameEvents: testCase == "test_success");

        if (testCase == "test_success")
        {
            Assert.Equal(["blockdev-mirror: ok", "block-job-complete: ok"], qsd.Log);
            Assert.Equal(DifferentialDaemon.ReadyJobEvents, qsd.Events);
        }
        else
        {
            Assert.Equal(["blockdev-mirror: GenericError: Block node is read-only"], qsd.Log);
            Assert.Equal(["JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED"], qsd.Events);
            Assert.Equal(["BLOCK_EXPORT_DELETED"], ours.Events);
        }
    }
}
