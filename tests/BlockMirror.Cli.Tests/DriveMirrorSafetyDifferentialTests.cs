using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// drive-mirror where it could cost a user a disk, run unchanged on qemu-storage-daemon 7.2 and on
/// <c>blockmirror serve</c>, each in its own directory: a target that is a file an open node uses (the source
/// itself, its backing file, a link to it) is refused with QEMU's lock error and left as it was, however the
/// rest of the request reads; an existing target without a format is probed (a qcow2 named .img is a qcow2);
/// a target probed as raw refuses a write that would give it an image header.
/// </summary>
public sealed class DriveMirrorSafetyDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-drive-mirror-safety-");

    public void Dispose() => _dir.Dispose();

    static readonly string[] NodeOverTop = ["--blockdev", "driver=qcow2,node-name=top,file.driver=file,file.filename={0}/top.qcow2"];

    /// <summary>
    /// Before the fix, each of these deleted top.qcow2 (or base.qcow2) before the refusal or the job: the
    /// daemon went on writing into a deleted inode and the disk was gone at exit.
    /// </summary>
    static IEnumerable<JsonObject> RequestsOnFilesInUse(string dir)
    {
        JsonObject Mirror(string target, JsonObject? more = null)
        {
            var request = new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["target"] = $"{dir}/{target}", ["sync"] = "full" };
            foreach (var (key, value) in more ?? [])
            {
                request[key] = value?.DeepClone();
            }

            return request;
        }

        yield return Mirror("top.qcow2", new() { ["granularity"] = 3 });
        yield return Mirror("top.qcow2");
        yield return Mirror("top.qcow2", new() { ["format"] = "raw" });
        yield return Mirror("link.qcow2");
        yield return Mirror("base.qcow2");
        yield return Mirror("base.qcow2", new() { ["sync"] = "top" });
        yield return Mirror("top.qcow2", new() { ["mode"] = "existing" });
        yield return Mirror("base.qcow2", new() { ["mode"] = "existing", ["sync"] = "top" });
    }

    [SkippableFact]
    public async Task A_target_file_an_open_node_uses_is_refused_and_left_as_it_was_on_both_daemons()
    {
        List<string>[] replies = [[], []];
        var daemons = Daemons();
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            await ImageRecipes.Qcow2Async(dir, "base.qcow2", "8M", [], ["write -P 0x11 0 4M"]);
            await ImageRecipes.Qcow2Async(dir, "top.qcow2", "8M", ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x22 1M 1M"]);
            File.CreateSymbolicLink($"{dir}/link.qcow2", $"{dir}/top.qcow2");
            string[] files = [$"{dir}/base.qcow2", $"{dir}/top.qcow2"];
            var before = files.Select(QemuImages.Fingerprint).ToList();
            var log = replies[i];
            var events = await daemons[i].RunAsync(dir, Args(NodeOverTop, dir), "top", async (qmp, uri) =>
            {
                foreach (var request in RequestsOnFilesInUse(dir))
                {
                    var reply = await qmp.CommandAsync("drive-mirror", request);
                    var error = reply["error"] ?? throw new InvalidOperationException($"{daemons[i].Name} accepted {request.ToJsonString()}");
                    log.Add($"{request.ToJsonString()}: {error["class"]}: {error["desc"]}".Replace(dir, "DIR", StringComparison.Ordinal));
                }

                Assert.Empty((await qmp.ExecuteAsync("query-block-jobs"))!.AsArray());
                Assert.Equal(before, files.Select(QemuImages.Fingerprint));

                // The guest still reads its disk through the daemon: the file under it was not replaced.
                await ImageRecipes.QemuIoAsync(uri, "raw", ["read -P 0x11 0 1M", "read -P 0x22 1M 1M", "read -P 0x11 2M 2M"]);
            });
            Assert.Equal(["BLOCK_EXPORT_DELETED"], events);
            Assert.Equal(before, files.Select(QemuImages.Fingerprint));
        }

        // QEMU checks the backing's name before it takes the lock: sync=top onto the source's own backing file.
        Assert.All(replies[0], r => Assert.Contains(r.Contains("\"sync\":\"top\"", StringComparison.Ordinal) && !r.Contains("existing", StringComparison.Ordinal)
            ? "GenericError: Error: Trying to create an image with the same filename as the backing file"
            : "GenericError: Failed to get \"write\" lock", r, StringComparison.Ordinal));
        Assert.Equal(replies[0], replies[1]);
    }

    [SkippableFact]
    public async Task Mode_existing_without_a_format_probes_the_target_so_a_qcow2_named_img_stays_a_qcow2_on_both_daemons()
    {
        var daemons = Daemons();
        List<string>[] events = [[], []];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            await QemuImages.CreateAsync($"{dir}/source.raw", "8M", "write -P 0x5a 0 1M", "write -P 0xa5 3M 64k");
            await ImageRecipes.Qcow2Async(dir, "copy.img", "8M", [], []);
            events[i] = await daemons[i].RunAsync(dir, ["--blockdev", $"driver=raw,node-name=src,file.driver=file,file.filename={dir}/source.raw"], "src",
                async (qmp, uri) =>
                {
                    await qmp.ExecuteAsync("drive-mirror", new JsonObject
                    {
                        ["job-id"] = "job0", ["device"] = "src", ["target"] = $"{dir}/copy.img", ["sync"] = "full", ["mode"] = "existing",
                    });
                    await qmp.WaitEventAsync("BLOCK_JOB_READY");
                    await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
                    await DifferentialDaemon.WaitJobGoneAsync(qmp);
                });

            Assert.Equal("qcow2", await FormatOfAsync($"{dir}/copy.img"));
            await QemuImages.AssertIdenticalAsync($"{dir}/source.raw", $"{dir}/copy.img", actualFormat: "qcow2");
            Assert.Contains("No errors were found on the image.", await ExternalTool.RunCheckedAsync("qemu-img", "check", $"{dir}/copy.img"));
        }

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, events[0]);
        Assert.Equal(events[0], events[1]);
    }

    [SkippableFact]
    public async Task A_target_probed_as_raw_refuses_a_qcow2_header_in_its_first_block_on_both_daemons()
    {
        var daemons = Daemons();
        List<string>[] events = [[], []];
        string?[] errors = [null, null];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);

            // The source is a raw disk whose guest wrote a qcow2 header into its first block (opened as raw,
            // explicitly); the target is an existing raw file given without a format.
            await ImageRecipes.Qcow2Async(dir, "guest.img", "8M", [], []);
            using (var file = File.OpenWrite($"{dir}/guest.img"))
            {
                file.SetLength(8 << 20);
            }

            await QemuImages.CreateAsync($"{dir}/target.img", "8M", "write -P 0x77 4M 64k");
            var index = i;
            events[i] = await daemons[i].RunAsync(dir, ["--blockdev", $"driver=raw,node-name=src,file.driver=file,file.filename={dir}/guest.img"], "src",
                async (qmp, uri) =>
                {
                    await qmp.ExecuteAsync("drive-mirror", new JsonObject
                    {
                        ["job-id"] = "job0", ["device"] = "src", ["target"] = $"{dir}/target.img", ["sync"] = "full", ["mode"] = "existing",
                    });
                    var completed = await qmp.WaitEventAsync("BLOCK_JOB_COMPLETED");
                    errors[index] = (string?)completed["data"]!["error"];
                    var error = qmp.Events.Single(e => (string?)e["event"] == "BLOCK_JOB_ERROR");
                    Assert.Equal("write", (string?)error["data"]!["operation"]);
                    Assert.Equal("report", (string?)error["data"]!["action"]);
                    await DifferentialDaemon.WaitJobGoneAsync(qmp);
                });

            Assert.Equal("raw", await FormatOfAsync($"{dir}/target.img"));
            var start = new byte[512];
            using (var target = File.OpenRead($"{dir}/target.img"))
            {
                target.ReadExactly(start);
            }

            Assert.All(start, b => Assert.Equal(0, b));
        }

        Assert.Equal("Operation not permitted", errors[0]);
        Assert.Equal(errors[0], errors[1]);
        Assert.Equal(
        [
            "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "BLOCK_JOB_ERROR write report", "JOB_STATUS_CHANGE aborting",
            "BLOCK_JOB_COMPLETED error: Operation not permitted",
            "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
        ], events[0]);
        Assert.Equal(events[0], events[1]);
    }

    /// <summary>
    /// A node-name the graph already has: both daemons refuse it in QEMU's words, and an existing target is left as
    /// it was. A deliberate difference, pinned: qemu-storage-daemon 7.2 formats a new target (absolute-paths) before
    /// it finds the name taken, and leaves the file behind; we refuse before creating anything.
    /// </summary>
    [SkippableFact]
    public async Task A_node_name_already_in_the_graph_is_refused_and_no_target_is_made()
    {
        var daemons = Daemons();
        List<string>[] replies = [[], []];
        bool[] created = [false, false];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            await QemuImages.CreateAsync($"{dir}/source.raw", "8M", "write -P 0x5a 0 1M");
            await ImageRecipes.Qcow2Async(dir, "existing.qcow2", "8M", [], ["write -P 0x33 0 64k"]);
            var before = QemuImages.Fingerprint($"{dir}/existing.qcow2");
            var log = replies[i];
            await daemons[i].RunAsync(dir, ["--blockdev", $"driver=raw,node-name=src,file.driver=file,file.filename={dir}/source.raw"], "src",
                async (qmp, _) =>
                {
                    foreach (var (target, mode, nodeName) in new[] { ("new.qcow2", "absolute-paths", "src"), ("existing.qcow2", "existing", "src") })
                    {
                        var reply = await qmp.CommandAsync("drive-mirror", new JsonObject
                        {
                            ["job-id"] = "job0", ["device"] = "src", ["target"] = $"{dir}/{target}", ["format"] = "qcow2", ["sync"] = "full",
                            ["mode"] = mode, ["node-name"] = nodeName,
                        });
                        var error = reply["error"] ?? throw new InvalidOperationException($"{daemons[i].Name} accepted node-name {nodeName}");
                        log.Add($"{target}: {error["class"]}: {error["desc"]}");
                    }

                    Assert.Empty((await qmp.ExecuteAsync("query-block-jobs"))!.AsArray());
                });
            created[i] = File.Exists($"{dir}/new.qcow2");
            Assert.Equal(before, QemuImages.Fingerprint($"{dir}/existing.qcow2"));
        }

        Assert.Equal(["new.qcow2: GenericError: Duplicate nodes with node-name='src'", "existing.qcow2: GenericError: Duplicate nodes with node-name='src'"], replies[0]);
        Assert.Equal(replies[0], replies[1]);
        Assert.True(created[0], "qemu-storage-daemon 7.2 no longer creates the target before refusing the name: the pinned difference is gone");
        Assert.False(created[1], "blockmirror created a target for a request it refused");
    }

    /// <summary>
    /// New targets whose size defeats the creation (absolute-paths over an existing file): a raw file larger than
    /// the file system takes (here the process's RLIMIT_FSIZE of 1 MiB, SIGXFSZ ignored, so the resize fails with
    /// EFBIG) and a qcow2 whose L1 table would pass qcow2's limit (a 4 PiB source). Both daemons refuse them in
    /// QEMU's words and start no job. A deliberate difference, pinned: qemu-storage-daemon 7.2 has truncated the
    /// existing raw file by then (bdrv_img_create truncates before it resizes); ours writes the new image beside it
    /// and renames it over only once whole, so the file is left as it was, with nothing else left behind.
    /// </summary>
    [SkippableFact]
    public async Task A_new_target_the_size_defeats_is_refused_in_qemus_words_and_ours_keeps_the_file_that_was_there()
    {
        var daemons = Daemons().Select(d => d with { Program = FileSizeLimit.Shell, Prefix = FileSizeLimit.Arguments(1 << 20, [d.Program, .. d.Prefix]) }).ToArray();
        List<string>[] replies = [[], []];
        byte[]?[] left = [null, null];
        string[][] files = [[], []];
        var precious = "what the user kept here\n"u8.ToArray();
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            await File.WriteAllBytesAsync($"{dir}/existing.img", precious);
            var log = replies[i];
            await daemons[i].RunAsync(dir, ["--blockdev", "driver=null-co,node-name=src,size=8388608", "--blockdev", $"driver=null-co,node-name=big,size={4L << 50}"], "src",
                async (qmp, _) =>
                {
                    foreach (var (device, format) in new[] { ("big", "qcow2"), ("src", "raw") })
                    {
                        var reply = await qmp.CommandAsync("drive-mirror", new JsonObject
                        {
                            ["job-id"] = "job0", ["device"] = device, ["target"] = $"{dir}/existing.img", ["format"] = format, ["sync"] = "full",
                            ["mode"] = "absolute-paths",
                        });
                        var error = reply["error"] ?? throw new InvalidOperationException($"{daemons[i].Name} accepted a {format} target");
                        log.Add($"{format}: {error["class"]}: {error["desc"]}");
                    }

                    Assert.Empty((await qmp.ExecuteAsync("query-block-jobs"))!.AsArray());
                });
            left[i] = await File.ReadAllBytesAsync($"{dir}/existing.img");
            files[i] = [.. Directory.GetFiles(dir).Select(Path.GetFileName).Where(f => !f!.EndsWith(".sock", StringComparison.Ordinal)).Order()!];
        }

        Assert.Equal(
        [
            "qcow2: GenericError: The image size is too large for file format 'qcow2' (try using a larger cluster size)",
            "raw: GenericError: The image size is too large for file format 'raw'",
        ], replies[0]);
        Assert.Equal(replies[0], replies[1]);
        Assert.True(left[0]!.Length == 0, "qemu-storage-daemon 7.2 no longer truncates the existing file before the size fails: the pinned difference is gone");
        Assert.Equal(precious, left[1]);
        Assert.Equal(["existing.img"], files[1]);
    }

    static DifferentialDaemon[] Daemons() => [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];

    string DirFor(DifferentialDaemon daemon) => Directory.CreateDirectory(Path.Combine(_dir.Path, daemon.Name)).FullName;

    static string[] Args(string[] template, string dir) => [.. template.Select(a => string.Format(System.Globalization.CultureInfo.InvariantCulture, a, dir))];

    /// <summary>The format qemu-img's probe gives the file.</summary>
    static async Task<string?> FormatOfAsync(string path)
    {
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", path));
        return info.RootElement.GetProperty("format").GetString();
    }
}
