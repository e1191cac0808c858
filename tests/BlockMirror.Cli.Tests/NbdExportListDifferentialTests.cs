using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The order a client sees exports in (NBD_OPT_LIST, as <c>nbdinfo --list</c> asks) and query-block-exports
/// lists them in, on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: QEMU keeps its exports in the order
/// they were added, from the command line then over QMP, and one deleted and added again goes to the end. The
/// ids are chosen to sort differently from both the names and that order, so a server that sorts shows it.
/// </summary>
public sealed partial class NbdExportListDifferentialTests
{
    [Fact]
    public async Task Exports_are_listed_in_the_order_they_were_added_as_by_qemu_storage_daemon()
    {
        ExternalTool.Require("nbdinfo");
        using var root = new TempDirectory("bm-nbd-list-");
        var seen = new List<string>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemon.Name)).FullName;
            var image = Path.Combine(dir, "disk.raw");
            await File.WriteAllBytesAsync(image, new byte[1 << 20]);
            string[] blockdevs = ["--blockdev", $"driver=file,node-name=n0,filename={image}"];
            string[] extra =
            [
                "--export", "type=nbd,id=c,node-name=n0,name=zeta",
                "--export", "type=nbd,id=a,node-name=n0,name=alpha",
            ];
            await daemon.RunAsync(dir, blockdevs, "n0", async (qmp, _) =>
            {
                await qmp.ExecuteAsync("block-export-add", Export("b", "mid"));
                await qmp.ExecuteAsync("block-export-del", new JsonObject { ["id"] = "c" });
                await qmp.WaitEventAsync("BLOCK_EXPORT_DELETED", e => e["data"]?["id"]?.GetValue<string>() == "c");
                await qmp.ExecuteAsync("block-export-add", Export("d", "zeta"));
                var list = await ExternalTool.RunCheckedAsync("nbdinfo", "--list", $"nbd+unix://?socket={dir}/nbd.sock");
                var names = ExportLine().Matches(list).Select(m => m.Groups[1].Value);
                var ids = (await qmp.ExecuteAsync("query-block-exports"))!.AsArray().Select(e => e!["id"]!.GetValue<string>());
                seen.Add($"{daemon.Name}: listed {string.Join(", ", names)}; query-block-exports {string.Join(", ", ids)}");
            }, extra: extra);
        }

        // qemu-storage-daemon's own answer, pinned, and ours the same.
        Assert.Equal("qsd: listed disk, alpha, mid, zeta; query-block-exports d, b, a, exp0", seen[0]);
        Assert.Equal(seen[0].Replace("qsd:", "ours:", StringComparison.Ordinal), seen[1]);
    }

    static JsonObject Export(string id, string name) => new() { ["type"] = "nbd", ["id"] = id, ["node-name"] = "n0", ["name"] = name };

    [GeneratedRegex("^export=\"([^\"]*)\":$", RegexOptions.Multiline)]
    private static partial Regex ExportLine();
}
