using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// What a backup tool reads from an export's bitmaps: <c>nbdinfo --map=qemu:dirty-bitmap:NAME</c> and
/// <c>nbdinfo --list --content</c> (libnbd's client) and <c>qemu-img map</c> with <c>x-dirty-bitmap</c> (QEMU's own
/// client reading the context), against <c>blockmirror serve</c> and qemu-storage-daemon 7.2 exporting the same
/// images after the same writes (<see cref="NbdBitmapImages"/>: made by qemu-io with the bitmaps enabled). The
/// answers must agree, and be the writes.
/// </summary>
public sealed class NbdBitmapMapInteropTests
{
    const string Export = "bm";

    static readonly string[] ExportOptions = ["--export", $"type=nbd,id=bm,node-name=top,name={Export},bitmaps.0=b0,bitmaps.1=b1,bitmaps.2=bb"];

    /// <summary>What the clients say about the export on one daemon, in order.</summary>
    static async Task<List<string>> ReadAsync(DifferentialDaemon daemon, string dir)
    {
        await NbdBitmapImages.CreateAsync(dir);
        var seen = new List<string>();
        await daemon.RunAsync(dir, NbdBitmapImages.Blockdevs(dir, readOnly: true), "exp", async (_, _) =>
        {
            var uri = $"nbd+unix:///{Export}?socket={dir}/nbd.sock";
            var list = await ExternalTool.RunCheckedAsync("nbdinfo", "--list", "--content", uri);
            // The daemons list their exports in different orders: this export's part.
            var ours = list[list.IndexOf($"export=\"{Export}\":", StringComparison.Ordinal)..];
            var contexts = ours[ours.IndexOf("\tcontexts:\n", StringComparison.Ordinal)..];
            seen.Add(contexts[..contexts.IndexOf("\tis_", StringComparison.Ordinal)]);
            foreach (var bitmap in new[] { "b0", "b1", "bb" })
            {
                seen.Add($"{bitmap}:\n{await ExternalTool.RunCheckedAsync("nbdinfo", $"--map=qemu:dirty-bitmap:{bitmap}", uri)}");
            }

            seen.Add("qemu-img map b0: " + await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "--image-opts",
                $"driver=nbd,server.type=unix,server.path={dir}/nbd.sock,export={Export},x-dirty-bitmap=qemu:dirty-bitmap:b0"));
        }, extra: ExportOptions);
        return seen;
    }

    [Fact]
    public async Task Nbdinfo_and_qemu_img_read_the_same_bitmaps_from_both_daemons()
    {
        ExternalTool.Require("nbdinfo");
        using var root = new TempDirectory("bm-nbd-bitmap-map-");
        var qsd = await ReadAsync(DifferentialDaemon.Qsd(), Directory.CreateDirectory(Path.Combine(root.Path, "qsd")).FullName);
        var ours = await ReadAsync(DifferentialDaemon.Ours(), Directory.CreateDirectory(Path.Combine(root.Path, "ours")).FullName);

        Assert.Equal(string.Join('\n', qsd), string.Join('\n', ours));
        Assert.Equal("\tcontexts:\n\t\tbase:allocation\n\t\tqemu:dirty-bitmap:b0\n\t\tqemu:dirty-bitmap:b1\n\t\tqemu:dirty-bitmap:bb\n", ours[0]);
        Assert.Equal(Map("b0", (0, 65536, false), (65536, 65536, true), (131072, 917504, false), (1048576, 65536, true), (1114112, 2031616, false), (3145728, 1048576, true)), ours[1]);
        // b1 was disabled before the last write, and its chunks are 128 KiB.
        Assert.Equal(Map("b1", (0, 131072, true), (131072, 917504, false), (1048576, 131072, true), (1179648, 3014656, false)), ours[2]);
        Assert.Equal(Map("bb", (0, 65536, true), (65536, 4128768, false)), ours[3]);
        // QEMU's client reads a dirty range as a hole, not present (the context's dirty bit is base:allocation's hole bit).
        Assert.Contains("{ \"start\": 3145728, \"length\": 1048576, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false", ours[4], StringComparison.Ordinal);
    }

    /// <summary>nbdinfo's map lines for a bitmap's extents.</summary>
    static string Map(string bitmap, params (long Start, long Length, bool Dirty)[] extents) =>
        $"{bitmap}:\n" + string.Concat(extents.Select(e => $"{e.Start,10}  {e.Length,10}    {(e.Dirty ? 1 : 0)}  {(e.Dirty ? "dirty" : "clean")}\n"));
}
