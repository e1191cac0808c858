using System.Text.Json.Nodes;
using BlockMirror.Cli.Tests.Iotests;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// block-export-add's <c>bitmaps</c> on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>, the same script on
/// the same images (<see cref="NbdBitmapImages"/>): which bitmaps are found and where, which are refused and in
/// which words (not found, an enabled bitmap of a writable node on a read-only export, busy, inconsistent, the
/// {node, name} form's own errors), and that an export's bitmaps are busy until it is deleted.
/// </summary>
public sealed class NbdBitmapExportDifferentialTests
{
    static JsonObject Export(string id, bool writable, params JsonNode[] bitmaps) => new()
    {
        ["type"] = "nbd", ["id"] = id, ["node-name"] = id.StartsWith("stale", StringComparison.Ordinal) ? "stale" : "top", ["name"] = id,
        ["writable"] = writable, ["bitmaps"] = new JsonArray(bitmaps),
    };

    static JsonObject Named(string node, string name) => new() { ["node"] = node, ["name"] = name };

    [Fact]
    public async Task Export_bitmap_checks_agree_with_qemu_storage_daemon()
    {
        using var root = new TempDirectory("bm-nbd-bitmaps-");
        var (qsd, _) = await IotestRun.OnBothAsync(root, NbdBitmapImages.CreateAsync, dir => NbdBitmapImages.Blockdevs(dir, readOnly: false), "exp", async session =>
        {
            await session.TryAsync("block-export-add", Export("e-missing", false, "nope"));
            // b0 is enabled and top writable: a read-only export would see it change.
            await session.TryAsync("block-export-add", Export("e-enabled", false, "b0"));
            await session.TryAsync("block-export-add", Export("e-b0", true, "b0"));
            await session.TryAsync("block-export-add", Export("e-b1", false, "b1"));
            await session.TryAsync("block-export-add", Export("e-busy", true, "b1"));
            await session.TryAsync("block-export-add", Export("e-busy-named", true, Named("top", "b0")));
            // Found in the backing file, a read-only node: enabled or not, it cannot change.
            await session.TryAsync("block-export-add", Export("e-backing", false, "bb"));
            await session.TryAsync("block-export-add", Export("e-no-node", false, Named("nowhere", "b1")));
            await session.TryAsync("block-export-add", Export("e-no-bitmap", false, Named("top", "zz")));
            // Named with its node, the bitmap is not looked for down the chain.
            await session.TryAsync("block-export-add", Export("e-not-here", false, Named("top", "bb")));
            await session.TryAsync("block-export-add", Export("stale-e", false, "stale"));
            await session.TryAsync("block-export-add", Export("e-none", false));
            await session.TryAsync("block-export-del", new JsonObject { ["id"] = "e-b1" });
            await session.TryAsync("block-export-add", Export("e-again", true, "b1", Named("base", "bb")));
            var exports = (await session.RunAsync("query-block-exports"))!.AsArray();
            session.Log.Add("exports: " + string.Join(", ", exports.Select(e => (string?)e!["id"])));
        });

        Assert.Equal(
        [
            "block-export-add: GenericError: Bitmap 'nope' is not found",
            "block-export-add: GenericError: Enabled bitmap 'b0' incompatible with readonly export",
            "block-export-add: ok",
            "block-export-add: ok",
            "block-export-add: GenericError: Bitmap 'b1' is currently in use by another operation and cannot be used",
            "block-export-add: GenericError: Bitmap 'b0' is currently in use by another operation and cannot be used",
            "block-export-add: ok",
            "block-export-add: GenericError: Node 'nowhere' not found",
            "block-export-add: GenericError: Dirty bitmap 'zz' not found",
            "block-export-add: GenericError: Dirty bitmap 'bb' not found",
            "block-export-add: GenericError: Bitmap 'stale' is inconsistent and cannot be used",
            "block-export-add: ok",
            "block-export-del: ok",
            "block-export-add: GenericError: Bitmap 'bb' is currently in use by another operation and cannot be used",
            "query-block-exports: ok",
            "exports: e-none, e-backing, e-b0, exp0",
        ], qsd.Log);
    }

    [Fact]
    public async Task Bitmaps_given_on_the_command_line_are_exported_as_by_qmp()
    {
        using var root = new TempDirectory("bm-nbd-bitmaps-");
        string[] extra = ["--export", "type=nbd,id=cl,node-name=top,name=cl,bitmaps.0=b1,bitmaps.1.node=base,bitmaps.1.name=bb"];
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemon.Name)).FullName;
            await NbdBitmapImages.CreateAsync(dir);
            string? busy = null;
            await daemon.RunAsync(dir, NbdBitmapImages.Blockdevs(dir, readOnly: false), "exp", async (qmp, _) =>
            {
                busy = await JobQmp.ReplyAsync(qmp, "block-export-add", Export("e-busy", true, Named("base", "bb")));
                var list = await ExternalTool.RunCheckedAsync("nbdinfo", "--list", "--content", $"nbd+unix:///cl?socket={dir}/nbd.sock");
                Assert.Contains("\tcontexts:\n\t\tbase:allocation\n\t\tqemu:dirty-bitmap:b1\n\t\tqemu:dirty-bitmap:bb\n", list, StringComparison.Ordinal);
            }, extra: extra);
            Assert.Equal("GenericError: Bitmap 'bb' is currently in use by another operation and cannot be used", busy);
        }
    }

    /// <summary>
    /// <c>allocation-depth: true</c> serves <c>qemu:allocation-depth</c>: nbdinfo reads the same layers from both daemons,
    /// the top image's own clusters at depth 1, the backing file's at 2, neither at 0.
    /// </summary>
    [Fact]
    public async Task Allocation_depth_reads_the_same_layers_from_both_daemons()
    {
        ExternalTool.Require("nbdinfo");
        using var root = new TempDirectory("bm-nbd-bitmaps-");
        var maps = new List<string>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemon.Name)).FullName;
            await NbdBitmapImages.CreateAsync(dir);
            await daemon.RunAsync(dir, NbdBitmapImages.Blockdevs(dir, readOnly: true), "exp", async (qmp, _) =>
            {
                var export = Export("e-depth", false);
                export["allocation-depth"] = true;
                Assert.Equal("ok", await JobQmp.ReplyAsync(qmp, "block-export-add", export));
                maps.Add(await ExternalTool.RunCheckedAsync("nbdinfo", "--map=qemu:allocation-depth", $"nbd+unix:///e-depth?socket={dir}/nbd.sock"));
            });
        }

        Assert.Equal(maps[0], maps[1]);
        Assert.Equal(
            "         0       65536    2  backing depth 2\n" +
            "     65536       65536    1  local\n" +
            "    131072      917504    0  absent\n" +
            "   1048576       65536    1  local\n" +
            "   1114112     2031616    0  absent\n" +
            "   3145728     1048576    1  local\n", maps[1]);
    }
}
