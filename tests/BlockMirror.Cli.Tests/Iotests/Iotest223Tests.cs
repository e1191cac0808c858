using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 223, "reading a dirty bitmap over NBD", on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>:
/// the export commands' answers, qemu-io reading the data back through the export, and <c>qemu-img map</c> of the
/// plain status and of each bitmap through <c>x-dirty-bitmap</c>, which must be the iotest's.
/// </summary>
/// <remarks>
/// Changes from the iotest: the bitmaps are made with <c>qemu-img bitmap</c> (the iotest's block-dirty-bitmap-add and
/// -disable are QMP commands of their own), exports with block-export-add (7.2's form; the iotest's nbd-server-add
/// is the deprecated one) and the NBD server is started by the command line; its qemu-nbd part is QEMU's server only.
/// </remarks>
public sealed partial class Iotest223Tests
{
    const string Image = "t.qcow2";

    /// <summary>
    /// The iotest's image: 4 MiB of 4 KiB clusters, 0x11 at [1 MiB, 3 MiB); bitmaps b (64 KiB granularity) and b2
    /// (512 B), both recording while 0x22 goes to [512, 1 KiB) and 0x33 to [2 MiB, 4 MiB); then b stops recording.
    /// </summary>
    static async Task PrepareAsync(string dir)
    {
        var image = $"{dir}/{Image}";
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", image, "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-c", "w -P 0x11 1M 2M", image);
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--enable", "-g", "64K", image, "b");
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--add", "--enable", "-g", "512", image, "b2");
        await ExternalTool.RunCheckedAsync("qemu-io", "-c", "w -P 0x22 512 512", "-c", "w -P 0x33 2M 2M", image);
        await ExternalTool.RunCheckedAsync("qemu-img", "bitmap", "--disable", image, "b");
    }

    static string[] Blockdevs(string dir) =>
    [
        .. IotestRun.Qcow2Node(dir, "n", Image),
        .. JobQmp.NullNode("exp", 4 << 20),
    ];

    static JsonObject Export(string id, string node, string name, bool writable = false, string? bitmap = null)
    {
        var export = new JsonObject { ["type"] = "nbd", ["id"] = id, ["node-name"] = node, ["name"] = name, ["writable"] = writable };
        if (bitmap is not null)
        {
            export["bitmaps"] = new JsonArray(bitmap);
        }

        return export;
    }

    /// <summary>qemu-img map of the export through QEMU's client, offsets written as the iotest's filter writes them.</summary>
    static async Task<string> MapAsync(IotestSession session, string export, string? context = null)
    {
        var options = $"driver=nbd,export={export},server.type=unix,server.path={session.Dir}/nbd.sock{(context is null ? "" : $",x-dirty-bitmap={context}")}";
        var map = await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "--image-opts", options);
        return OffsetValue().Replace(map, "\"offset\": OFFSET").Trim();
    }

    [GeneratedRegex("\"offset\": [0-9]+")]
    private static partial Regex OffsetValue();

    [Fact]
    public async Task Dirty_bitmaps_read_over_nbd()
    {
        using var root = new TempDirectory("bm-iotest223-");
        var (_, ours) = await IotestRun.OnBothAsync(root, PrepareAsync, Blockdevs, "exp", async session =>
        {
            await session.TryAsync("nbd-server-start", new JsonObject { ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = $"{session.Dir}/nbd1" } } });
            await session.TryAsync("block-export-add", Export("n", "n", "n", bitmap: "b"));
            await session.TryAsync("block-export-add", Export("nosuch", "nosuch", "nosuch"));
            await session.TryAsync("block-export-add", Export("n-again", "n", "n"));
            await session.TryAsync("block-export-add", Export("n2", "n", "n2", bitmap: "b2"));
            await session.TryAsync("block-export-add", Export("n2", "n", "n2", bitmap: "b3"));
            await session.TryAsync("block-export-add", Export("n2", "n", "n2", writable: true, bitmap: "b2"));

            var read = await ExternalTool.RunCheckedAsync("qemu-io", "-r", "-c", "r -P 0x22 512 512", "-c", "r -P 0 512k 512k", "-c", "r -P 0x11 1m 1m",
                "-c", "r -P 0x33 2m 2m", "--image-opts", $"driver=nbd,export=n,server.type=unix,server.path={session.Dir}/nbd.sock");
            session.Log.Add($"qemu-io: {Regex.Count(read, "^read ", RegexOptions.Multiline)} reads, {(read.Contains("failed", StringComparison.Ordinal) ? "a pattern failed" : "patterns as written")}");
            session.Log.Add("map n: " + await MapAsync(session, "n"));
            session.Log.Add("map n b: " + await MapAsync(session, "n", "qemu:dirty-bitmap:b"));
            session.Log.Add("map n2 b2: " + await MapAsync(session, "n2", "qemu:dirty-bitmap:b2"));

            await session.TryAsync("block-export-del", new JsonObject { ["id"] = "n" });
            await session.TryAsync("block-export-del", new JsonObject { ["id"] = "n2" });
            await session.TryAsync("block-export-del", new JsonObject { ["id"] = "n2" });
            await session.TryAsync("nbd-server-stop");
            await session.TryAsync("nbd-server-stop");
        });

        Assert.Equal(
        [
            "nbd-server-start: GenericError: NBD server already running",
            "block-export-add: ok",
            "block-export-add: GenericError: Cannot find device='' nor node-name='nosuch'",
            "block-export-add: GenericError: NBD server already has export named 'n'",
            "block-export-add: GenericError: Enabled bitmap 'b2' incompatible with readonly export",
            "block-export-add: GenericError: Bitmap 'b3' is not found",
            "block-export-add: ok",
            "qemu-io: 4 reads, patterns as written",
        ], ours.Log.Take(8));
        // 223.out's maps: b's 64 KiB chunk over the 512 bytes at 512 and the 2 MiB at 2 MiB (not the 0x11 before
        // the bitmaps existed); b2's 512-byte chunks exactly.
        Assert.Equal(
            "map n b: [{ \"start\": 0, \"length\": 65536, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false},\n" +
            "{ \"start\": 65536, \"length\": 2031616, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"offset\": OFFSET},\n" +
            "{ \"start\": 2097152, \"length\": 2097152, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false}]", ours.Log[9]);
        Assert.Equal(
            "map n2 b2: [{ \"start\": 0, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"offset\": OFFSET},\n" +
            "{ \"start\": 512, \"length\": 512, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false},\n" +
            "{ \"start\": 1024, \"length\": 2096128, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"offset\": OFFSET},\n" +
            "{ \"start\": 2097152, \"length\": 2097152, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false}]", ours.Log[10]);
        Assert.Equal(
        [
            "block-export-del: ok",
            "block-export-del: ok",
            "block-export-del: GenericError: Export 'n2' is not found",
            "nbd-server-stop: ok",
            "nbd-server-stop: GenericError: NBD server not running",
        ], ours.Log.Skip(11));
    }
}
