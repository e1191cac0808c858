using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// A missing or empty job id, run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: a job
/// started without <c>job-id</c> would take its device's name, which no node of the storage daemon has, so
/// it is refused as <c>Invalid job ID ''</c>, as is an empty or malformed one; a verb naming the job '' finds
/// none. The replies must be the same and no job may start.
/// </summary>
public sealed class JobIdDifferentialTests
{

    static IEnumerable<(string Command, JsonObject Arguments)> Requests(string dir)
    {
        yield return ("blockdev-mirror", new() { ["device"] = "n1", ["target"] = "n2", ["sync"] = "full" });
        yield return ("blockdev-mirror", new() { ["job-id"] = "", ["device"] = "n1", ["target"] = "n2", ["sync"] = "full" });
        yield return ("blockdev-mirror", new() { ["job-id"] = "9", ["device"] = "n1", ["target"] = "n2", ["sync"] = "full" });
        yield return ("blockdev-mirror", new() { ["job-id"] = "a b", ["device"] = "n1", ["target"] = "n2", ["sync"] = "full" });
        yield return ("block-commit", new() { ["device"] = "top" });
        yield return ("block-commit", new() { ["job-id"] = "", ["device"] = "top" });
        yield return ("block-commit", new() { ["job-id"] = "", ["device"] = "top", ["top-node"] = "top", ["base-node"] = "base" });
        yield return ("drive-mirror", new() { ["device"] = "n1", ["target"] = $"{dir}/n1.raw", ["format"] = "raw", ["sync"] = "full", ["mode"] = "existing" });
        yield return ("drive-mirror", new() { ["job-id"] = "", ["device"] = "n1", ["target"] = $"{dir}/n1.raw", ["format"] = "raw", ["sync"] = "full", ["mode"] = "existing" });
        yield return ("drive-mirror", new() { ["device"] = "n1", ["target"] = $"{dir}/new.qcow2", ["format"] = "qcow2", ["sync"] = "full" });
        foreach (var verb in new[] { "job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize", "job-dismiss", "block-job-finalize", "block-job-dismiss" })
        {
            yield return (verb, new() { ["id"] = "" });
        }

        foreach (var verb in new[] { "block-job-pause", "block-job-resume", "block-job-cancel", "block-job-complete" })
        {
            yield return (verb, new() { ["device"] = "" });
        }

        yield return ("block-job-set-speed", new() { ["device"] = "", ["speed"] = 0 });
    }

    [SkippableFact]
    public async Task A_missing_or_empty_job_id_is_refused_and_an_empty_one_names_no_job_as_qemu_does()
    {
        var created = new Dictionary<string, bool>();
        var (qsd, ours) = await JobQmp.OnBothAsync("job-id", async (daemon, dir) =>
        {
            await ImageRecipes.Qcow2Async(dir, "base.qcow2", "4M", [], ["write -P 0x11 0 1M"]);
            await ImageRecipes.Qcow2Async(dir, "top.qcow2", null, ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x22 1M 1M"]);
            await QemuImages.CreateAsync($"{dir}/n1.raw", $"{1 << 20}");
            var before = QemuImages.Fingerprint($"{dir}/n1.raw");
            var log = new List<string>();
            var events = await daemon.RunAsync(dir,
            [
                "--blockdev", $"driver=qcow2,node-name=base,file.driver=file,file.filename={dir}/base.qcow2",
                "--blockdev", $"driver=qcow2,node-name=top,file.driver=file,file.filename={dir}/top.qcow2,backing=base",
                .. JobQmp.NullNode("n1", 1 << 20), .. JobQmp.NullNode("n2", 1 << 20), .. JobQmp.NullNode("exp", 1 << 20),
            ], "exp", async (qmp, _) =>
            {
                foreach (var (command, arguments) in Requests(dir))
                {
                    log.Add($"{command} {arguments.ToJsonString()}: {await JobQmp.ReplyAsync(qmp, command, arguments)}".Replace(dir, "DIR", StringComparison.Ordinal));
                }

                log.Add($"query-jobs: {(await qmp.ExecuteAsync("query-jobs"))!.ToJsonString()}");
            });
            log.Add($"events: {string.Join(", ", events)}");
            log.Add($"n1.raw unchanged: {QemuImages.Fingerprint($"{dir}/n1.raw") == before}");
            created[daemon.Name] = File.Exists($"{dir}/new.qcow2");
            return log;
        });

        // Deliberate difference: QEMU creates drive-mirror's new target before it checks the job id, and
        // leaves the file behind when it refuses; BlockMirror checks first and creates nothing.
        Assert.Equal(new Dictionary<string, bool> { ["qsd"] = true, ["ours"] = false }, created);

        Assert.Contains("blockdev-mirror {\"device\":\"n1\",\"target\":\"n2\",\"sync\":\"full\"}: GenericError: Invalid job ID ''", qsd);
        Assert.Contains("block-commit {\"device\":\"top\"}: GenericError: Invalid job ID ''", qsd);
        Assert.Contains("job-pause {\"id\":\"\"}: GenericError: Job not found", qsd);
        Assert.Contains("block-job-pause {\"device\":\"\"}: DeviceNotActive: Block job '' not found", qsd);
        JobQmp.AssertSame(qsd, ours);
    }
}
