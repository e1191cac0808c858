using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Backing-chain jobs as a qemu-storage-daemon user scripts them, run unchanged against qemu-storage-daemon
/// and <c>blockmirror serve</c>, each daemon on its own copy of base.qcow2 &lt;- mid.qcow2 &lt;- top.qcow2 (made by
/// qemu-img and qemu-io, opened from top's header, top exported over NBD and written by qemu-io): active
/// commit, intermediate commit, drive-mirror sync=top, and refused requests. Both daemons must give the same
/// events and replies, leave images qemu-img check finds clean, and hold the same data: the guest's view of
/// top before the job plus every write made over NBD.
/// </summary>
public sealed class ServeChainDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-serve-chain-");

    public void Dispose() => _dir.Dispose();

    /// <summary>Each level gets data, written zeroes and a discard, partly over what the levels below hold.</summary>
    static readonly (string Name, string[] Writes)[] Chain =
    [
        ("base.qcow2", ["write -P 0x11 0 4M", "write -z 1M 64k", "discard 2M 128k", "write -P 0x12 6M 64k"]),
        ("mid.qcow2", ["write -P 0x22 512k 64k", "write -z 3M 64k", "discard 64k 64k", "write -P 0x23 7M 128k"]),
        ("top.qcow2", ["write -P 0x33 5M 128k", "write -z 0 64k", "discard 6M 64k", "write -P 0x34 3M 4k"]),
    ];

    /// <summary>
    /// The guest's writes over NBD, by phase; a job without READY gets its "ready" writes after it ends. A
    /// discard acts only on a node opened with discard=unmap: qemu-storage-daemon opens --blockdev nodes with
    /// discard=ignore (and a drive-mirror target with its source's flags) but a backing file its header
    /// names with discard=unmap, so only after an active commit's pivot to the base does a discard read as zeroes.
    /// </summary>
    static readonly (string Phase, string Command)[] Writes =
    [
        ("before", "write -P 0x41 1M 64k"), ("before", "write -z 4M 64k"), ("before", "discard 5M 64k"),
        ("running", "write -P 0x42 2M 4k"), ("running", "write -P 0x43 7M 64k"),
        ("ready", "write -P 0x51 0 4k"), ("ready", "write -z 3M 64k"),
        ("after", "write -P 0x61 6M 64k"), ("after", "write -z 5M 4k"), ("after", "discard 7M 64k"),
    ];

    static readonly string[] SelfCompletingJobEvents =
    [
        "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending",
        "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null", "BLOCK_EXPORT_DELETED",
    ];

    [SkippableFact]
    public async Task Active_commit_leaves_the_guest_view_in_the_base_alone_on_both_daemons()
    {
        var (theirs, ours) = await RunOnBothAsync(discardsAfterPivot: true, (qmp, uri, dir) => ReadyJobScriptAsync(qmp, uri,
            "block-commit", new JsonObject { ["job-id"] = "job0", ["device"] = "top" }, $"{dir}/base.qcow2"));

        await AssertSameOutcomeAsync(DifferentialDaemon.ReadyJobEvents, theirs, ours, "base.qcow2", backing: null);
    }

    [SkippableFact]
    public async Task Intermediate_commit_completes_by_itself_and_rebases_top_on_both_daemons()
    {
        var (theirs, ours) = await RunOnBothAsync(discardsAfterPivot: false, async (qmp, uri, dir) =>
        {
            await WriteAsync(uri, "before");
            await qmp.ExecuteAsync("block-commit", new JsonObject
            {
                ["job-id"] = "job0", ["device"] = "top", ["top"] = $"{dir}/mid.qcow2", ["base"] = $"{dir}/base.qcow2",
            });
            await WriteAsync(uri, "running");
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
            Assert.Equal($"{dir}/top.qcow2", await ExportedFileAsync(qmp));
            await WriteAsync(uri, "ready");
            await WriteAsync(uri, "after");
        });

        await AssertSameOutcomeAsync(SelfCompletingJobEvents, theirs, ours, "top.qcow2", backing: "base.qcow2");
    }

    [SkippableFact]
    public async Task Drive_mirror_sync_top_makes_a_copy_backed_by_the_sources_backing_on_both_daemons()
    {
        var (theirs, ours) = await RunOnBothAsync(discardsAfterPivot: false, (qmp, uri, dir) => ReadyJobScriptAsync(qmp, uri,
            "drive-mirror", new JsonObject
            {
                ["job-id"] = "job0", ["device"] = "top", ["target"] = $"{dir}/copy.qcow2", ["sync"] = "top", ["format"] = "qcow2",
            },
            $"{dir}/copy.qcow2"));

        await AssertSameOutcomeAsync(DifferentialDaemon.ReadyJobEvents, theirs, ours, "copy.qcow2", backing: "mid.qcow2");
    }

    /// <remarks>
    /// A bad format must leave a file already at the target's path as it was (keep.qcow2). Past that,
    /// scratch.qcow2 is not compared: QEMU creates the target before it checks the sync mode or the
    /// granularity and leaves it behind, while we check the sync mode first and delete a target we created
    /// for a job that did not start. Left out, as the daemons differ there: a negative speed or a filter-node-name
    /// in use (QEMU creates the job before it checks either, so it also emits JOB_STATUS_CHANGE created and
    /// null; we refuse with the same error before any job exists) and a missing job-id (qemu-storage-daemon's
    /// nodes have no device name, so QEMU refuses "Invalid job ID ''"; we take the device as the ID).
    /// </remarks>
    [SkippableFact]
    public async Task Refused_commit_and_mirror_requests_get_the_same_errors_and_change_nothing_on_both_daemons()
    {
        List<string>[] replies = [[], []];
        var (theirs, ours) = await RunOnBothAsync(discardsAfterPivot: false, async (qmp, uri, dir) =>
        {
            await ImageRecipes.Qcow2Async(dir, "other.qcow2", "8M", [], []);
            await ImageRecipes.Qcow2Async(dir, "keep.qcow2", "8M", [], ["write -P 0x77 0 64k"]);
            var kept = QemuImages.Fingerprint($"{dir}/keep.qcow2");
            await qmp.ExecuteAsync("blockdev-add", new JsonObject
            {
                ["driver"] = "qcow2", ["node-name"] = "other", ["read-only"] = true,
                ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = $"{dir}/other.qcow2", ["read-only"] = true },
            });

            var log = replies[dir == Dirs[0] ? 0 : 1];
            foreach (var (command, arguments) in RefusedRequests(dir))
            {
                var seen = qmp.Events.Count;
                var reply = await qmp.CommandAsync(command, arguments);
                var error = reply["error"] ?? throw new InvalidOperationException($"{command} {arguments.ToJsonString()} was accepted: {reply.ToJsonString()}");
                var events = string.Join(", ", qmp.Events.Skip(seen).Select(DifferentialDaemon.Describe));
                log.Add($"{command} {arguments.ToJsonString()}: {error["class"]}: {error["desc"]} [{events}]".Replace(dir, "DIR", StringComparison.Ordinal));
            }

            Assert.Empty((await qmp.ExecuteAsync("query-block-jobs"))!.AsArray());
            Assert.Equal(kept, QemuImages.Fingerprint($"{dir}/keep.qcow2"));
            Assert.False(File.Exists($"{dir}/new.qcow2"));
        });

        Assert.Equal(replies[0].Count, replies[1].Count);
        foreach (var (qsd, blockmirror) in replies[0].Zip(replies[1]))
        {
            Assert.True(qsd == blockmirror, $"qemu-storage-daemon: {qsd}\nblockmirror serve:   {blockmirror}");
        }

        Assert.Equal(["BLOCK_EXPORT_DELETED"], theirs);
        Assert.Equal(theirs, ours);
    }

    /// <summary>Requests both daemons refuse, each with an error QEMU 7.2 words its own way.</summary>
    static IEnumerable<(string Command, JsonObject Arguments)> RefusedRequests(string dir)
    {
        var commit = new JsonObject { ["job-id"] = "job0", ["device"] = "top" };
        var mirror = new JsonObject { ["job-id"] = "job0", ["device"] = "top", ["target"] = $"{dir}/scratch.qcow2", ["sync"] = "top" };
        yield return ("block-commit", With(commit, new() { ["device"] = "nope" }));
        yield return ("block-commit", With(commit, new() { ["base-node"] = "nope" }));
        yield return ("block-commit", With(commit, new() { ["top-node"] = "nope" }));
        yield return ("block-commit", With(commit, new() { ["base-node"] = "other" }));
        yield return ("block-commit", With(commit, new() { ["top-node"] = "top", ["base-node"] = "top" }));
        yield return ("block-commit", With(commit, new() { ["top"] = "base.qcow2" }));
        yield return ("block-commit", With(commit, new() { ["top"] = $"{dir}/mid.qcow2", ["base"] = $"{dir}/mid.qcow2" }));
        yield return ("block-commit", With(commit, new() { ["base"] = $"{dir}/top.qcow2" }));
        yield return ("block-commit", With(commit, new() { ["top"] = $"{dir}/missing.qcow2" }));
        yield return ("block-commit", With(commit, new() { ["backing-file"] = "x.qcow2" }));
        yield return ("block-commit", With(commit, new() { ["job-id"] = "bad id" }));
        yield return ("drive-mirror", With(mirror, new() { ["format"] = "nope", ["target"] = $"{dir}/keep.qcow2" }));
        yield return ("drive-mirror", With(mirror, new() { ["format"] = "raw", ["target"] = $"{dir}/keep.qcow2" }));
        yield return ("drive-mirror", With(mirror, new() { ["mode"] = "existing", ["target"] = $"{dir}/new.qcow2" }));
        yield return ("drive-mirror", With(mirror, new() { ["sync"] = "incremental" }));
        yield return ("drive-mirror", With(mirror, new() { ["granularity"] = 3 }));
    }

    /// <summary>The defaults with the changes applied, as a new object.</summary>
    static JsonObject With(JsonObject defaults, JsonObject changes)
    {
        var result = defaults.DeepClone().AsObject();
        foreach (var (key, value) in changes)
        {
            result[key] = value?.DeepClone();
        }

        return result;
    }

    /// <summary>
    /// qemu-storage-daemon gave the expected events and blockmirror serve the same; in each daemon's
    /// directory <paramref name="image"/>'s header names <paramref name="backing"/> (resolved: the spelling may
    /// differ), or nothing, and the image holds the expected guest view, as it does under the other daemon.
    /// </summary>
    async Task AssertSameOutcomeAsync(string[] expectedEvents, List<string> theirs, List<string> ours, string image, string? backing)
    {
        Assert.Equal(expectedEvents, theirs);
        Assert.Equal(theirs, ours);
        foreach (var dir in Dirs)
        {
            Assert.Equal(backing is null ? null : $"{dir}/{backing}", await BackingOfAsync($"{dir}/{image}"));
            await QemuImages.AssertIdenticalAsync($"{dir}/expected.raw", $"{dir}/{image}", actualFormat: "qcow2");
        }

        await QemuImages.AssertIdenticalAsync($"{Dirs[0]}/{image}", $"{Dirs[1]}/{image}", "qcow2", "qcow2");
    }

    /// <summary>The script of a job that reports READY: writes before it, while it runs, once ready, and after the pivot to <paramref name="pivotTo"/>.</summary>
    static async Task ReadyJobScriptAsync(QmpClient qmp, string uri, string command, JsonObject arguments, string pivotTo)
    {
        await WriteAsync(uri, "before");
        await qmp.ExecuteAsync(command, arguments);
        await WriteAsync(uri, "running");
        await qmp.WaitEventAsync("BLOCK_JOB_READY");
        await WriteAsync(uri, "ready");
        await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
        await DifferentialDaemon.WaitJobGoneAsync(qmp);
        Assert.Equal(pivotTo, await ExportedFileAsync(qmp));
        await WriteAsync(uri, "after");
    }

    string[] Dirs => [Path.Combine(_dir.Path, "qsd"), Path.Combine(_dir.Path, "ours")];

    /// <summary>
    /// Runs the script (client, NBD URI, the daemon's directory) on qemu-storage-daemon, then on blockmirror
    /// serve, each over a new chain in its own directory beside expected.raw (top's view plus the writes, the
    /// "after" discards as zeroes when <paramref name="discardsAfterPivot"/>); checks every image afterwards.
    /// Returns both event logs.
    /// </summary>
    async Task<(List<string> Theirs, List<string> Ours)> RunOnBothAsync(bool discardsAfterPivot, Func<QmpClient, string, string, Task> script)
    {
        List<string>[] events = [[], []];
        DifferentialDaemon[] daemons = [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Dirs[i];
            Directory.CreateDirectory(dir);
            for (var level = 0; level < Chain.Length; level++)
            {
                string[] backing = level == 0 ? [] : ["-b", Chain[level - 1].Name, "-F", "qcow2"];
                await ImageRecipes.Qcow2Async(dir, Chain[level].Name, "8M", backing, Chain[level].Writes);
            }

            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", $"{dir}/top.qcow2", $"{dir}/expected.raw");
            await ImageRecipes.QemuIoAsync($"{dir}/expected.raw", "raw", Writes.Select(w => !w.Command.StartsWith("discard ", StringComparison.Ordinal) ? w.Command
                : discardsAfterPivot && w.Phase == "after" ? $"write -z {w.Command["discard ".Length..]}" : null).OfType<string>());

            events[i] = await daemons[i].RunAsync(dir, ["--blockdev", $"driver=qcow2,node-name=top,file.driver=file,file.filename={dir}/top.qcow2"], "top",
                (qmp, uri) => script(qmp, uri, dir));
            foreach (var image in Directory.GetFiles(dir, "*.qcow2"))
            {
                var check = await ExternalTool.RunCheckedAsync("qemu-img", "check", image);
                Assert.Contains("No errors were found on the image.", check);
            }
        }

        return (events[0], events[1]);
    }

    static Task WriteAsync(string uri, string phase) =>
        ImageRecipes.QemuIoAsync(uri, "raw", Writes.Where(w => w.Phase == phase).Select(w => w.Command));

    /// <summary>The file of the node the NBD export serves now (it moves at a job's pivot).</summary>
    static async Task<string?> ExportedFileAsync(QmpClient qmp)
    {
        var exported = (string?)(await qmp.ExecuteAsync("query-block-exports"))!.AsArray().Single()!["node-name"];
        var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
        return (string?)nodes.Single(n => (string?)n!["node-name"] == exported)!["file"];
    }

    /// <summary>The image's backing file, resolved as qemu-img resolves it (the header may spell it relative), or null.</summary>
    static async Task<string?> BackingOfAsync(string image)
    {
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", image));
        return info.RootElement.TryGetProperty("full-backing-filename", out var backing) ? backing.GetString() : null;
    }
}
