using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary><c>blockmirror info</c> against <c>qemu-img info</c> on the same images, made by qemu-img and qemu-io.</summary>
public sealed class InfoCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-info-test-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Recipes => ImageRecipes.All;

    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task Json_has_qemu_img_fields_and_values(string recipe)
    {
        var path = await ImageRecipes.BuildAsync(recipe, _dir);

        foreach (var variant in new string[][] { ["--output=json"], ["--output=json", "--backing-chain"] })
        {
            var runs = await SideBySide.RunAsync(ImageRecipes.Describe(recipe), null, ["info", .. variant, path]);
            Assert.True(runs.Ours.ExitCode == 0, runs.ToString());
            SideBySide.AssertSameJsonOutput(runs);
            // Same key order and layout as well: scripts diff these outputs.
            SideBySide.AssertSameOutput(runs);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task Human_report_is_qemu_img_s(string recipe)
    {
        var path = await ImageRecipes.BuildAsync(recipe, _dir);
        var dir = Path.GetDirectoryName(path)!;
        var name = Path.GetFileName(path);

        // Relative and absolute names: the backing file names printed depend on how the image was named.
        foreach (var arguments in new string[][] { ["info", name], ["info", "--backing-chain", name], ["info", "--backing-chain", path], ["info", "-f", ImageFormat(path), path] })
        {
            var runs = await SideBySide.RunAsync(ImageRecipes.Describe(recipe), dir, arguments);
            Assert.True(runs.Ours.ExitCode == 0 && runs.Ours.StandardError.Length == 0, runs.ToString());
            SideBySide.AssertSameOutput(runs);
        }
    }

    static string ImageFormat(string path) => path.EndsWith(".raw", StringComparison.Ordinal) ? "raw" : "qcow2";

    [SkippableFact]
    public async Task Dirty_and_corrupt_flags_are_reported()
    {
        var path = await ImageRecipes.BuildAsync("written", _dir);
        // incompatible_features (byte 72..79): dirty (bit 0) and corrupt (bit 1).
        ImageRecipes.Poke(path, 79, 0x03);

        foreach (var arguments in new string[][] { ["info", path], ["info", "--output=json", path] })
        {
            var runs = await SideBySide.RunAsync("written, then the dirty and corrupt bits set", null, arguments);
            Assert.Equal(0, runs.Ours.ExitCode);
            SideBySide.AssertSameOutput(runs);
        }

        var human = await BlockMirrorCli.RunAsync("info", path);
        Assert.Contains("cleanly shut down: no", human.OutputLines);
        Assert.Contains("    corrupt: true", human.OutputLines);
    }

    [SkippableFact]
    public async Task Bitmaps_in_use_are_listed_with_their_flag()
    {
        var path = await ImageRecipes.BuildAsync("bitmaps", _dir);
        // b0 as a writer that did not close the image leaves it: in use (bit 0) and auto (bit 1).
        ImageRecipes.PokeBitmapFlags(path, 0, 3);

        foreach (var arguments in new string[][] { ["info", path], ["info", "--output=json", path] })
        {
            var runs = await SideBySide.RunAsync($"{ImageRecipes.Describe("bitmaps")}; then b0 marked in use", null, arguments);
            SideBySide.AssertSameOutput(runs);
        }

        var human = await BlockMirrorCli.RunAsync("info", path);
        Assert.Contains("                [0]: in-use", human.OutputLines);
    }

    [SkippableFact]
    public async Task An_overlay_whose_backing_file_is_missing_still_reports()
    {
        var path = await ImageRecipes.BuildAsync("chain3", _dir);
        File.Delete(Path.Combine(Path.GetDirectoryName(path)!, "base.qcow2"));

        var runs = await SideBySide.RunAsync("chain3 without base.qcow2", null, "info", "--output=json", path);
        Assert.Equal(0, runs.Ours.ExitCode);
        SideBySide.AssertSameOutput(runs);

        // The chain stops at the missing file, with qemu-img's exit code.
        var chain = await SideBySide.RunAsync("chain3 without base.qcow2", null, "info", "--backing-chain", path);
        Assert.Equal(chain.Qemu.ExitCode, chain.Ours.ExitCode);
        SideBySide.AssertOneErrorLine(chain.Ours, "info", "No such file or directory");
    }

    [SkippableFact]
    public async Task A_backing_loop_is_refused()
    {
        ExternalTool.Require("qemu-img");
        var a = _dir.File("a.qcow2");
        var b = _dir.File("b.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", a, "1M");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b);
        await ExternalTool.RunCheckedAsync("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a);

        var result = await BlockMirrorCli.RunAsync("info", "--backing-chain", b);

        Assert.Equal(1, result.ExitCode);
        SideBySide.AssertOneErrorLine(result, "info", "creates an infinite loop");
    }
}
