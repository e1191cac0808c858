using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror map</c> against <c>qemu-img map</c>. qemu-img (QEMU 7.2) asks each layer of the chain for
/// its block status; so does the command, through BlockMirror's drivers: a difference here is a difference
/// in what the block layer reports, and the message shows both maps.
/// </summary>
public sealed class MapCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-map-test-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Recipes => ImageRecipes.All;

    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task Json_extents_are_qemu_img_s(string recipe)
    {
        var path = await ImageRecipes.BuildAsync(recipe, _dir);

        var runs = await SideBySide.RunAsync(ImageRecipes.Describe(recipe), null, "map", "--output=json", path);

        Assert.True(runs.Ours.ExitCode == 0 && runs.Ours.StandardError.Length == 0, runs.ToString());
        using var expected = JsonDocument.Parse(runs.Qemu.StandardOutput);
        using var actual = JsonDocument.Parse(runs.Ours.StandardOutput);
        var qemu = expected.RootElement.EnumerateArray().ToList();
        var ours = actual.RootElement.EnumerateArray().ToList();
        for (var i = 0; i < Math.Min(qemu.Count, ours.Count); i++)
        {
            foreach (var field in new[] { "start", "length", "depth", "present", "zero", "data" })
            {
                Assert.True(qemu[i].GetProperty(field).GetRawText() == ours[i].GetProperty(field).GetRawText(),
                    $"extent {i}: {field} is {qemu[i].GetProperty(field)} for qemu-img, {ours[i].GetProperty(field)} for blockmirror\n{runs}");
            }
        }

        Assert.True(qemu.Count == ours.Count, $"qemu-img maps {qemu.Count} extents, blockmirror {ours.Count}\n{runs}");
        // Host offsets too: both read the same file, so the data lives at the same place.
        SideBySide.AssertSameOutput(runs);
    }

    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task Human_table_is_qemu_img_s(string recipe)
    {
        var path = await ImageRecipes.BuildAsync(recipe, _dir);
        var dir = Path.GetDirectoryName(path)!;

        foreach (var name in new[] { Path.GetFileName(path), path })
        {
            var runs = await SideBySide.RunAsync(ImageRecipes.Describe(recipe), dir, "map", name);
            SideBySide.AssertSameOutput(runs);
            if (runs.Qemu.ExitCode != 0)
            {
                // Compressed clusters have no place in a file the table could show.
                SideBySide.AssertOneErrorLine(runs.Ours, "map", "File contains external, encrypted or compressed clusters.");
            }
        }
    }

    [SkippableFact]
    public async Task An_empty_image_maps_as_qemu_img_maps_it()
    {
        ExternalTool.Require("qemu-img");
        var path = _dir.File("empty.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", path, "0");

        foreach (var arguments in new string[][] { ["map", "--output=json", path], ["map", path] })
        {
            SideBySide.AssertSameOutput(await SideBySide.RunAsync("qemu-img create -f qcow2 empty.qcow2 0", null, arguments));
        }
    }

    [SkippableFact]
    public async Task A_data_cluster_past_the_end_of_the_file_maps_as_qemu_img_maps_it()
    {
        var path = await ImageRecipes.BuildAsync("written", _dir);
        // L2[0] (the data cluster at guest offset 0) now points at host cluster 100, past the end of the file:
        // reads of it return zeroes.
        var layout = ImageRecipes.ReadLayout(path);
        var l1 = new byte[8];
        using (var stream = File.OpenRead(path))
        {
            stream.Position = layout.L1TableOffset;
            stream.ReadExactly(l1);
        }

        var l2 = (long)(System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(l1) & 0x00fffffffffffe00UL);
        var entry = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(entry, 0x8000000000000000UL | (100UL << layout.ClusterBits));
        ImageRecipes.Poke(path, l2, entry);

        var runs = await SideBySide.RunAsync($"{ImageRecipes.Describe("written")}; then L2[0] pointed at host cluster 100, past the end of the file",
            null, "map", "--output=json", path);

        SideBySide.AssertSameOutput(runs);
    }
}
