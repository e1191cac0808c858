using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// blockdev-create's <c>preallocation</c> run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror
/// serve</c>: the file driver with off, falloc and full (metadata is refused; a file grown from empty has its
/// first block written, as QEMU's file-posix writes it), qcow2 with off, metadata, falloc
/// and full, on a version 3 and a version 2 image, and qcow2's refusal of preallocation with a backing file.
/// Each job's result and what the images are (their size, whether the file's blocks are allocated, as du sees
/// it, and what qemu-img check and map say) must be the same.
/// </summary>
public sealed class BlockdevCreatePreallocationDifferentialTests
{
    const long M = 1 << 20;

    static readonly string[] Modes = ["off", "metadata", "falloc", "full"];

    [SkippableFact]
    public async Task Preallocation_has_the_same_effect_and_errors_as_on_qemu()
    {
        var (qsd, ours) = await JobQmp.OnBothAsync("prealloc", async (daemon, dir) =>
        {
            var log = new List<string>();
            var images = new List<(string Name, string Format)>();
            await daemon.RunAsync(dir, [.. JobQmp.NullNode("exp", M)], "exp", async (qmp, _) =>
            {
                var jobs = 0;
                async Task<bool> CreateAsync(string what, JsonObject options)
                {
                    var id = $"job{++jobs}";
                    var reply = await JobQmp.ReplyAsync(qmp, "blockdev-create", new JsonObject { ["job-id"] = id, ["options"] = options });
                    if (reply == "ok")
                    {
                        await JobQmp.WaitStatusAsync(qmp, id, "concluded");
                        var job = (await qmp.ExecuteAsync("query-jobs"))!.AsArray().Single(j => (string?)j!["id"] == id)!;
                        reply = (string?)job["error"] ?? "ok";
                        await qmp.ExecuteAsync("job-dismiss", new JsonObject { ["id"] = id });
                        await DifferentialDaemon.WaitJobGoneAsync(qmp);
                    }

                    log.Add($"{what}: {reply}");
                    return reply == "ok";
                }

                JsonObject File(string name, long size, string mode) =>
                    new() { ["driver"] = "file", ["filename"] = $"{dir}/{name}", ["size"] = size, ["preallocation"] = mode };

                foreach (var mode in Modes)
                {
                    if (await CreateAsync($"file {mode}", File($"f-{mode}.raw", 4 * M + 4096, mode)))
                    {
                        images.Add(($"f-{mode}.raw", "raw"));
                    }

                    foreach (var version in new[] { "v3", "v2" })
                    {
                        var name = $"q-{version}-{mode}.qcow2";
                        await CreateAsync($"file for {name}", File(name, 0, "off"));
                        await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = $"n{jobs}", ["filename"] = $"{dir}/{name}" });
                        if (await CreateAsync($"qcow2 {version} {mode}", new JsonObject
                        {
                            ["driver"] = "qcow2", ["file"] = $"n{jobs}", ["size"] = 8 * M + 512, ["version"] = version, ["preallocation"] = mode,
                        }))
                        {
                            images.Add((name, "qcow2"));
                        }
                    }
                }

                // QEMU's file-posix writes the first block of a file it grows from empty, even past a size below 512.
                if (await CreateAsync("file off 100 bytes", File("f-tiny.raw", 100, "off")))
                {
                    images.Add(("f-tiny.raw", "raw"));
                }

                // qcow2_co_create's refusal: preallocation and a backing file need extended L2 entries.
                await CreateAsync("file for backed.qcow2", File("backed.qcow2", 0, "off"));
                await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "backed", ["filename"] = $"{dir}/backed.qcow2" });
                await CreateAsync("qcow2 backing-file with falloc", new JsonObject
                {
                    ["driver"] = "qcow2", ["file"] = "backed", ["size"] = M, ["backing-file"] = "base.qcow2", ["preallocation"] = "falloc",
                });
            });

            foreach (var (name, format) in images)
            {
                var path = $"{dir}/{name}";
                var length = new FileInfo(path).Length;
                var allocated = await QemuImages.AllocatedBytesAsync(path);
                // du: a sparse file holds a few metadata clusters, a preallocated one all of its length.
                var blocks = allocated >= length - M ? "allocated" : allocated < length / 4 ? "sparse" : $"partly allocated ({allocated} of {length})";
                log.Add($"{name}: {length} bytes, {blocks}");
                log.Add($"{name} map: {await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", format, path)}");
                if (format == "qcow2")
                {
                    var check = await ExternalTool.RunAsync("qemu-img", ["check", "--output=json", "-f", format, path]);
                    var report = JsonNode.Parse(check.StandardOutput)!.AsObject();
                    report.Remove("filename");
                    log.Add($"{name} check: exit {check.ExitCode} {report.ToJsonString()}");
                }
            }

            return log;
        });

        Assert.Contains("file metadata: Unsupported preallocation mode: metadata", qsd);
        Assert.Contains("qcow2 v3 metadata: ok", qsd);
        Assert.Contains("qcow2 v2 full: ok", qsd);
        Assert.Contains("f-falloc.raw: 4198400 bytes, allocated", qsd);
        Assert.Contains("q-v3-metadata.qcow2: 8781824 bytes, sparse", qsd);
        Assert.Contains("q-v3-full.qcow2: 8781824 bytes, allocated", qsd);
        Assert.Contains("f-tiny.raw: 512 bytes, allocated", qsd);
        JobQmp.AssertSame(qsd, ours);
    }
}
