using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror resize --shrink</c> and <c>qemu-img resize --shrink</c> on copies of every qcow2 recipe (data,
/// zeroes, discards, small and large clusters, version 2, lazy and 1-bit refcounts, compressed clusters,
/// extended L2 entries, internal snapshots, backing files): the new end falls inside a cluster, so the cluster
/// that keeps part of its data is covered too. qemu-img judges the results: both pass <c>qemu-img check</c>
/// alike, read the same (<c>qemu-img compare</c> of one against the other), and map the same. Grown back
/// afterwards, they read and map the same again.
/// </summary>
public sealed class ResizeShrinkInteropTests : IDisposable
{
    readonly TempDirectory _qemu = new("blockmirror-shrink-qemu-");
    readonly TempDirectory _ours = new("blockmirror-shrink-ours-");

    public void Dispose()
    {
        _qemu.Dispose();
        _ours.Dispose();
    }

    public static TheoryData<string> Recipes => ImageRecipes.Qcow2;

    /// <summary>
    /// Recipes whose shrunk file ends elsewhere than QEMU's, and why: QEMU allocates an L2 table to discard in
    /// where the L1 entry is empty (so its file keeps two more clusters); ours leaves the entry empty.
    /// </summary>
    static readonly HashSet<string> OtherImageEnd = ["empty"];

    /// <summary>Recipes ours does not open for writing at all (README: extended L2 entries are read only), so it refuses and changes nothing.</summary>
    static readonly HashSet<string> WritingRefused = ["extended-l2"];

    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task Shrinking_a_qcow2_leaves_what_qemu_img_resize_leaves(string recipe)
    {
        var theirs = await ImageRecipes.BuildAsync(recipe, _qemu);
        var mine = await ImageRecipes.BuildAsync(recipe, _ours);
        var context = ImageRecipes.Describe(recipe);
        var size = await VirtualSizeAsync(theirs) / 2 + 512;

        var qemu = await ExternalTool.RunAsync("qemu-img", ["resize", "-f", "qcow2", "--shrink", theirs, $"{size}"]);
        var before = QemuImages.Fingerprint(mine);
        var ours = await BlockMirrorCli.RunAsync("resize", "-f", "qcow2", "--shrink", mine, $"{size}");
        if (WritingRefused.Contains(recipe))
        {
            Assert.True(qemu.ExitCode == 0 && ours.ExitCode == 1, $"{context}\n{ours}");
            SideBySide.AssertOneErrorLine(ours, "resize", "writing is not");
            Assert.Equal(before, QemuImages.Fingerprint(mine));
            return;
        }

        Assert.True(qemu.ExitCode == 0 && ours.ExitCode == 0 && ours.StandardOutput == qemu.StandardOutput, $"{context}\nqemu-img: {qemu.StandardOutput}{qemu.StandardError}\nours: {ours}");
        Assert.Equal(size, await VirtualSizeAsync(mine));
        var ignore = OtherImageEnd.Contains(recipe) ? new HashSet<string> { "filename", "image-end-offset" } : ["filename"];
        using (var expected = JsonDocument.Parse(await CheckAsync(theirs)))
        using (var actual = JsonDocument.Parse(await CheckAsync(mine)))
        {
            Assert.Equal(0, actual.RootElement.GetProperty("check-errors").GetInt32());
            SideBySide.AssertSameJson(expected.RootElement, actual.RootElement, context, ignore: ignore);
        }

        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", theirs, mine]);
        Assert.True(compare.ExitCode == 0, $"{context}\n{compare.StandardOutput}{compare.StandardError}");
        using var theirMap = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "qcow2", theirs));
        using var myMap = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "qcow2", mine));
        SideBySide.AssertSameJson(theirMap.RootElement, myMap.RootElement, context);
    }

    /// <summary>
    /// Shrunk and grown back to its size: the part a shrink cut off must not come back from a backing file that is
    /// longer than the shrunk image (QEMU zeroes it; a version 2 image, which has no zero clusters, refuses the grow).
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task Growing_back_after_a_shrink_leaves_what_qemu_img_resize_leaves(string recipe)
    {
        if (WritingRefused.Contains(recipe))
        {
            return;
        }

        var theirs = await ImageRecipes.BuildAsync(recipe, _qemu);
        var mine = await ImageRecipes.BuildAsync(recipe, _ours);
        var context = ImageRecipes.Describe(recipe);
        var size = await VirtualSizeAsync(theirs);
        var half = size / 2 + 512;
        await ExternalTool.RunCheckedAsync("qemu-img", "resize", "-f", "qcow2", "--shrink", theirs, $"{half}");
        await ExternalTool.RunCheckedAsync("qemu-img", "resize", "-f", "qcow2", "--shrink", mine, $"{half}");
        var before = QemuImages.Fingerprint(mine);

        var qemu = await ExternalTool.RunAsync("qemu-img", ["resize", "-f", "qcow2", theirs, $"{size}"]);
        var ours = await BlockMirrorCli.RunAsync("resize", "-f", "qcow2", mine, $"{size}");
        if (qemu.ExitCode != 0)
        {
            Assert.Equal("qemu-img: Failed to zero out new clusters: Operation not supported\n", qemu.StandardError);
            Assert.Equal(1, ours.ExitCode);
            SideBySide.AssertOneErrorLine(ours, "resize", "Failed to zero out new clusters: Operation not supported");
            Assert.Equal(before, QemuImages.Fingerprint(mine));
            return;
        }

        Assert.True(ours.ExitCode == 0 && ours.StandardOutput == qemu.StandardOutput, $"{context}\nqemu-img: {qemu.StandardOutput}{qemu.StandardError}\nours: {ours}");
        Assert.Equal(size, await VirtualSizeAsync(mine));
        var check = await ExternalTool.RunAsync("qemu-img", ["check", "-f", "qcow2", mine]);
        Assert.True(check.ExitCode == 0, $"{context}\n{check.StandardOutput}{check.StandardError}");
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", theirs, mine]);
        Assert.True(compare.ExitCode == 0, $"{context}\n{compare.StandardOutput}{compare.StandardError}");
        using var theirMap = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "qcow2", theirs));
        using var myMap = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "qcow2", mine));
        SideBySide.AssertSameJson(theirMap.RootElement, myMap.RootElement, context);
    }

    /// <summary>A version 2 image with an internal snapshot is refused, in qemu-img's words, and left as it was.</summary>
    [SkippableTheory]
    [InlineData("1M")]
    [InlineData("8M")]
    public async Task A_version_2_image_with_snapshots_is_refused_as_qemu_img_refuses_it(string size)
    {
        ExternalTool.Require("qemu-img");
        var path = await ImageRecipes.Qcow2Async(_ours.Path, "v2.qcow2", "4M", ["-o", "compat=0.10"], ["write -P 0x11 0 2M"]);
        await ExternalTool.RunCheckedAsync("qemu-img", "snapshot", "-c", "s1", path);
        var before = QemuImages.Fingerprint(path);

        var runs = await SideBySide.RunAsync("compat=0.10 with a snapshot", _ours.Path, "resize", "-f", "qcow2", "--shrink", path, size);

        Assert.Equal("qemu-img: Can't resize a v2 image which has snapshots\n", runs.Qemu.StandardError);
        Assert.Equal(1, runs.Ours.ExitCode);
        SideBySide.AssertOneErrorLine(runs.Ours, "resize", "Can't resize a v2 image which has snapshots");
        Assert.Equal(before, QemuImages.Fingerprint(path));
    }

    /// <summary>
    /// A version 2 overlay shorter than its backing file cannot hide the backing file's data in a grown part (it has
    /// no zero clusters): the grow is refused in qemu-img's words and the image left as it was.
    /// </summary>
    [SkippableFact]
    public async Task A_version_2_overlay_shorter_than_its_backing_file_refuses_to_grow_as_qemu_img_does()
    {
        ExternalTool.Require("qemu-img");
        await QemuImages.CreateAsync(Path.Combine(_ours.Path, "base.raw"), "4M", "write -P 0x77 0 4M");
        var path = await ImageRecipes.Qcow2Async(_ours.Path, "v2.qcow2", "2M", ["-o", "compat=0.10", "-b", "base.raw", "-F", "raw"], ["write -P 0x11 0 64k"]);
        var before = QemuImages.Fingerprint(path);

        var runs = await SideBySide.RunAsync("compat=0.10 over a longer backing file", _ours.Path, "resize", "-f", "qcow2", path, "4M");

        Assert.Equal("qemu-img: Failed to zero out new clusters: Operation not supported\n", runs.Qemu.StandardError);
        Assert.Equal(1, runs.Ours.ExitCode);
        SideBySide.AssertOneErrorLine(runs.Ours, "resize", "Failed to zero out new clusters: Operation not supported");
        Assert.Equal(before, QemuImages.Fingerprint(path));
    }

    static async Task<long> VirtualSizeAsync(string path)
    {
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", "-f", "qcow2", path));
        return info.RootElement.GetProperty("virtual-size").GetInt64();
    }

    /// <summary><c>qemu-img check --output=json</c>, whatever its exit code (it reports leaks with 3).</summary>
    static async Task<string> CheckAsync(string path) =>
        (await ExternalTool.RunAsync("qemu-img", ["check", "--output=json", "-f", "qcow2", path])).StandardOutput;
}
