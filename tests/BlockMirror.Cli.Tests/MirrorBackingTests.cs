using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror mirror --sync top</c> and <c>--sync none</c> over a backing chain made by qemu-img: a new
/// qcow2 target is backed as drive-mirror backs it (top: by the source's backing file, none: by the source),
/// so qemu-img reads the same guest content from both; a target that could not read so is refused before
/// anything is created or written.
/// </summary>
public sealed class MirrorBackingTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-mirror-backing-");

    public void Dispose() => _dir.Dispose();

    static async Task<JsonNode> InfoAsync(string image) =>
        JsonNode.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", image))!;

    /// <summary>The file the chain's second layer is, as qemu-img resolves the top's backing file name.</summary>
    static async Task<(string File, string Format)> BackingOfAsync(string image)
    {
        var info = await InfoAsync(image);
        return ((string)info["full-backing-filename"]!, (string)info["backing-filename-format"]!);
    }

    static async Task AssertIdenticalAsync(string source, string target)
    {
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", source, target]);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare {source} {target}: {compare.StandardOutput}{compare.StandardError}");
        Assert.Contains("No errors were found", await ExternalTool.RunCheckedAsync("qemu-img", "check", target));
    }

    static void AssertRefused(CliResult result, string message)
    {
        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.True(result.ErrorLines.Length == 1, $"expected one line on stderr:\n{result}");
        Assert.StartsWith("blockmirror mirror: ", result.ErrorLines[0], StringComparison.Ordinal);
        Assert.Contains(message, result.ErrorLines[0], StringComparison.Ordinal);
    }

    [SkippableTheory]
    [InlineData("chain3")]
    [InlineData("raw-backing")]
    [InlineData("short-backing")]
    public async Task Sync_top_onto_a_new_qcow2_names_the_source_backing_and_reads_what_the_source_reads(string recipe)
    {
        // Each recipe's top writes zeroes or data over what its backing holds and leaves the rest to it:
        // without the backing file in its header the new target read zeroes there.
        var top = await ImageRecipes.BuildAsync(recipe, _dir);
        var target = _dir.File("new.qcow2");

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "top", top, target);

        Assert.True(result.ExitCode == 0, $"{ImageRecipes.Describe(recipe)}\n{result}");
        Assert.Equal(await BackingOfAsync(top), await BackingOfAsync(target));
        await AssertIdenticalAsync(top, target);
    }

    [SkippableFact]
    public async Task Sync_none_onto_a_new_qcow2_is_backed_by_the_source_itself()
    {
        var top = await ImageRecipes.BuildAsync("chain3", _dir);
        var target = _dir.File("new.qcow2");

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "none", top, target);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal((top, "qcow2"), await BackingOfAsync(target));
        await AssertIdenticalAsync(top, target);
    }

    [SkippableFact]
    public async Task Sync_top_over_a_source_without_backing_is_a_full_copy()
    {
        var image = await ImageRecipes.BuildAsync("written", _dir);
        var target = _dir.File("new.qcow2");

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "top", image, target);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Null((await InfoAsync(target))["backing-filename"]);
        await AssertIdenticalAsync(image, target);
    }

    [SkippableFact]
    public async Task Sync_top_onto_an_existing_qcow2_with_its_own_backing_copies_the_top()
    {
        var top = await ImageRecipes.BuildAsync("chain3", _dir);
        var (backing, backingFormat) = await BackingOfAsync(top);
        var target = _dir.File("existing.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, target);

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "top", top, target);

        Assert.True(result.ExitCode == 0, result.ToString());
        await AssertIdenticalAsync(top, target);
    }

    [SkippableTheory]
    [InlineData("top", "new.raw", false)]
    [InlineData("top", "new.img", true)]
    [InlineData("none", "new.raw", false)]
    public async Task A_raw_target_that_would_need_a_backing_file_is_refused_and_not_created(string sync, string name, bool rawByOption)
    {
        var top = await ImageRecipes.BuildAsync("chain3", _dir);
        var target = _dir.File(name);

        var result = await BlockMirrorCli.RunAsync(["mirror", "--sync", sync, .. rawByOption ? new[] { "-O", "raw" } : [], top, target]);

        AssertRefused(result, $"--sync {sync}: TARGET '{target}' would be raw");
        Assert.Contains("raw cannot name a backing file; use a qcow2 TARGET or --sync full", result.StandardError, StringComparison.Ordinal);
        Assert.False(File.Exists(target), $"the refused mirror left {target} behind");
    }

    [SkippableTheory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    public async Task Sync_top_onto_an_existing_target_without_backing_is_refused_and_leaves_it_unchanged(string format)
    {
        var top = await ImageRecipes.BuildAsync("chain3", _dir);
        var target = _dir.File("existing." + format);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", format, target, "4M");
        await ImageRecipes.QemuIoAsync(target, format, ["write -P 0x77 0 4M"]);
        var before = QemuImages.Fingerprint(target);

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "top", top, target);

        AssertRefused(result, $"--sync top: TARGET '{target}' has no backing file");
        Assert.Equal(before, QemuImages.Fingerprint(target));
    }
}
