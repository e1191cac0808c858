using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The permission model against qemu-storage-daemon 7.2, by the same QMP on both: while a mirror runs its
/// target takes no other user, and while a commit runs its base takes no other writer; nodes in use cannot
/// be deleted; once the job has ended the same export is accepted. Both daemons must answer each step in
/// the same words.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class PermissionDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-perm-test-");

    public void Dispose() => _dir.Dispose();

    /// <summary>What ours must say (and qemu-storage-daemon 7.2 says), step by step.</summary>
    static readonly string[] Expected =
    [
        "writable export of the mirror target: Permission conflict on node 't': permissions 'consistent read, write' are both required by an unnamed block device (uses node 't' as 'root' child) and unshared by an unnamed block device (uses node 't' as 'root' child).",
        "read-only export of the mirror target: Permission conflict on node 't': permissions 'consistent read' are both required by an unnamed block device (uses node 't' as 'root' child) and unshared by an unnamed block device (uses node 't' as 'root' child).",
        "writable export of the mirror source: ok",
        "blockdev-del of the mirror target: Node t is in use",
        "blockdev-del of the target's file: Block device tf is in use",
        "writable export of the target after the mirror: ok",
        "writable export of the commit base: Permission conflict on node 'b': permissions 'write' are both required by an unnamed block device (uses node 'b' as 'root' child) and unshared by an unnamed block device (uses node 'b' as 'root' child).",
        "blockdev-del of the commit base: Node b is in use",
        "writable export of the base after the commit: ok",
    ];

    [SkippableFact]
    public async Task Jobs_keep_other_writers_off_their_target_and_base_while_they_run_in_qemus_words()
    {
        var qsd = await RunAsync(DifferentialDaemon.Qsd());
        var ours = await RunAsync(DifferentialDaemon.Ours());

        Assert.Equal(Expected, qsd);
        Assert.Equal(qsd, ours);
    }

    async Task<List<string>> RunAsync(DifferentialDaemon daemon)
    {
        var dir = _dir.File(daemon.Name);
        Directory.CreateDirectory(dir);
        await CreateAsync($"{dir}/s.qcow2", "write -P 1 0 16M");
        await CreateAsync($"{dir}/t.qcow2");
        await CreateAsync($"{dir}/b.qcow2");
        await CreateAsync($"{dir}/m.qcow2", "write -P 2 0 16M");
        await CreateAsync($"{dir}/a.qcow2");

        string[] blockdevs =
        [
            .. Node(dir, "s"), .. Node(dir, "t"), .. Node(dir, "b"), .. Node(dir, "m", backing: "b"), .. Node(dir, "a", backing: "m"),
        ];

        List<string> answers = [];
        await daemon.RunAsync(dir, blockdevs, "a", async (qmp, _) =>
        {
            async Task StepAsync(string what, string command, JsonObject arguments)
            {
                var reply = await qmp.CommandAsync(command, arguments);
                answers.Add($"{what}: {(reply["error"] is { } error ? (string?)error["desc"] : "ok")}");
            }

            // A slow mirror stays running while the steps are tried.
            await qmp.ExecuteAsync("blockdev-mirror", new JsonObject
            {
                ["job-id"] = "j", ["device"] = "s", ["target"] = "t", ["sync"] = "full", ["speed"] = 65536,
            });
            await StepAsync("writable export of the mirror target", "block-export-add", Export("e1", "t", writable: true));
            await StepAsync("read-only export of the mirror target", "block-export-add", Export("e2", "t", writable: false));
            await StepAsync("writable export of the mirror source", "block-export-add", Export("e3", "s", writable: true));
            await StepAsync("blockdev-del of the mirror target", "blockdev-del", new JsonObject { ["node-name"] = "t" });
            await StepAsync("blockdev-del of the target's file", "blockdev-del", new JsonObject { ["node-name"] = "tf" });
            await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "j", ["force"] = true });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
            await StepAsync("writable export of the target after the mirror", "block-export-add", Export("e4", "t", writable: true));

            await qmp.ExecuteAsync("block-commit", new JsonObject
            {
                ["job-id"] = "c", ["device"] = "a", ["top-node"] = "m", ["base-node"] = "b", ["speed"] = 65536,
            });
            await StepAsync("writable export of the commit base", "block-export-add", Export("e5", "b", writable: true));
            await StepAsync("blockdev-del of the commit base", "blockdev-del", new JsonObject { ["node-name"] = "b" });
            await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "c", ["force"] = true });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
            await StepAsync("writable export of the base after the commit", "block-export-add", Export("e6", "b", writable: true));
        });

        return answers;
    }

    static JsonObject Export(string id, string node, bool writable) =>
        new() { ["type"] = "nbd", ["id"] = id, ["node-name"] = node, ["name"] = id, ["writable"] = writable };

    static string[] Node(string dir, string name, string? backing = null) =>
    [
        "--blockdev", $"driver=file,node-name={name}f,filename={dir}/{name}.qcow2",
        "--blockdev", $"driver=qcow2,node-name={name},file={name}f" + (backing is null ? "" : $",backing={backing}"),
    ];

    static async Task CreateAsync(string path, string? write = null)
    {
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", path, "16M");
        if (write is not null)
        {
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", write, path);
        }
    }
}
