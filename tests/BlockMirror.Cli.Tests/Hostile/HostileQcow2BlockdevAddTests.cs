using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Hostile;

/// <summary>
/// The hostile qcow2 corpus through QMP's blockdev-add, read-only, on qemu-storage-daemon and on
/// <c>blockmirror serve</c>: every image is accepted or refused alike, a refusal with the same error class
/// and description, and no file changes. One daemon of each kind takes the whole corpus.
/// </summary>
public sealed class HostileQcow2BlockdevAddTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-hostile-blockdev-add-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Blockdev_add_of_each_hostile_image_gets_qemu_storage_daemons_answer()
    {
        var qsd = DifferentialDaemon.Qsd();
        var (valid, layout) = await HostileQcow2Corpus.ValidAsync(_dir.Path);
        var images = Directory.CreateDirectory(Path.Combine(_dir.Path, "images")).FullName;
        var rows = HostileQcow2Corpus.All.Where(d => !d.DiffersIn("serve")).Select((d, i) => (Damage: d, Path: Path.Combine(images, $"{i}.qcow2"))).ToList();
        foreach (var (damage, path) in rows)
        {
            HostileQcow2Corpus.Write(path, valid, layout, damage);
        }

        var before = rows.Select(r => QemuImages.Fingerprint(r.Path)).ToList();

        var theirs = await AnswersAsync(qsd, rows);
        var ours = await AnswersAsync(DifferentialDaemon.Ours(), rows);

        Assert.Equal(rows.Count, theirs.Count);
        Assert.Contains(theirs, a => a.EndsWith(": ok", StringComparison.Ordinal));
        Assert.Contains(theirs, a => a.Contains(": GenericError: Unsupported qcow2 version 4", StringComparison.Ordinal));
        Assert.Equal(theirs, ours);
        Assert.Equal(before, rows.Select(r => QemuImages.Fingerprint(r.Path)).ToList());
    }

    /// <summary>For each row: "ok" (and the node is deleted again) or the error's class and description.</summary>
    async Task<List<string>> AnswersAsync(DifferentialDaemon daemon, List<(HostileQcow2Corpus.Damage Damage, string Path)> rows)
    {
        var dir = Directory.CreateDirectory(Path.Combine(_dir.Path, daemon.Name)).FullName;
        var answers = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var (damage, path) in rows)
            {
                var reply = await qmp.CommandAsync("blockdev-add", new JsonObject
                {
                    ["driver"] = "qcow2",
                    ["node-name"] = "hostile",
                    ["read-only"] = true,
                    ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = path },
                });
                if (reply["error"] is { } error)
                {
                    answers.Add($"{damage.Name}: {(string?)error["class"]}: {(string?)error["desc"]}");
                    continue;
                }

                answers.Add($"{damage.Name}: ok");
                await qmp.ExecuteAsync("blockdev-del", new JsonObject { ["node-name"] = "hostile" });
            }
        });
        return answers;
    }
}
