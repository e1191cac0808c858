using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary><c>blockmirror compare</c> against <c>qemu-img compare</c>: exit code and message on the same pairs of images.</summary>
public sealed class CompareCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-compare-test-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Recipes => ImageRecipes.All;

    /// <summary>The image's content as a raw file, made by qemu-img convert.</summary>
    async Task<string> FlattenAsync(string path, string name)
    {
        var raw = _dir.File(name);
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", path, raw);
        return raw;
    }

    static async Task AssertSameAsync(string context, params string[] arguments)
    {
        var runs = await SideBySide.RunAsync(context, null, ["compare", .. arguments]);
        SideBySide.AssertSameOutput(runs);
        Assert.True(runs.Ours.StandardError.Length == 0, runs.ToString());
    }

    [SkippableTheory]
    [MemberData(nameof(Recipes))]
    public async Task An_image_and_its_flat_copy_compare_as_with_qemu_img(string recipe)
    {
        var path = await ImageRecipes.BuildAsync(recipe, _dir);
        var flat = await FlattenAsync(path, "flat.raw");
        var context = $"{ImageRecipes.Describe(recipe)}; flat.raw = qemu-img convert -O raw";

        await AssertSameAsync(context, path, flat);
        await AssertSameAsync(context, flat, path);
        await AssertSameAsync(context, "-s", path, flat);
        await AssertSameAsync(context, "-s", path, path);
        await AssertSameAsync(context, "-q", path, flat);
    }

    [SkippableTheory]
    [InlineData(0L)]
    [InlineData(70000L)]
    [InlineData(1048576L + 4095)]
    [InlineData(4194303L)]
    public async Task The_first_differing_sector_is_reported(long offset)
    {
        var path = await ImageRecipes.BuildAsync("chain3", _dir);
        var flat = await FlattenAsync(path, "flat.raw");
        var changed = await FlattenAsync(path, "changed.raw");
        var old = new byte[1];
        using (var stream = File.OpenRead(changed))
        {
            stream.Position = offset;
            stream.ReadExactly(old);
        }

        ImageRecipes.Poke(changed, offset, (byte)(old[0] ^ 0x5a));
        var context = $"{ImageRecipes.Describe("chain3")}; its flat copy with byte {offset} changed";

        await AssertSameAsync(context, path, changed);
        await AssertSameAsync(context, changed, flat);
        var result = await BlockMirrorCli.RunAsync("compare", path, changed);
        Assert.Equal(1, result.ExitCode);
        Assert.Equal($"Content mismatch at offset {offset / 512 * 512}!\n", result.StandardOutput);
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Images_of_different_sizes_compare_as_with_qemu_img(bool dataPastTheEnd)
    {
        var path = await ImageRecipes.BuildAsync("written", _dir);
        var longer = await FlattenAsync(path, "longer.raw");
        using (var stream = new FileStream(longer, FileMode.Open, FileAccess.Write))
        {
            stream.SetLength(6 << 20);
        }

        if (dataPastTheEnd)
        {
            ImageRecipes.Poke(longer, (5 << 20) + 1000, 1);
        }

        var context = $"{ImageRecipes.Describe("written")}; longer.raw = its flat copy grown to 6M" + (dataPastTheEnd ? " with a byte set at 5M+1000" : "");
        await AssertSameAsync(context, path, longer);
        await AssertSameAsync(context, longer, path);
        await AssertSameAsync(context, "-s", path, longer);

        var result = await BlockMirrorCli.RunAsync("compare", path, longer);
        Assert.StartsWith("Warning: Image size mismatch!\n", result.StandardOutput, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task Large_sparse_images_compare_without_reading_their_holes()
    {
        // 64 GiB each, sparse: reading them would take minutes; block status skips the holes.
        var a = _dir.File("a.raw");
        var b = _dir.File("b.raw");
        foreach (var path in new[] { a, b })
        {
            using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
            stream.SetLength(64L << 30);
            stream.Position = (64L << 30) - 4096;
            stream.Write(Enumerable.Repeat((byte)0x33, 4096).ToArray());
        }

        ImageRecipes.Poke(b, (64L << 30) - 10, 0x34);

        var result = await BlockMirrorCli.RunAsync(["compare", "-f", "raw", "-F", "raw", a, b], timeout: TimeSpan.FromSeconds(60));

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Equal($"Content mismatch at offset {(64L << 30) - 512}!\n", result.StandardOutput);
        var same = await BlockMirrorCli.RunAsync(["compare", a, a], timeout: TimeSpan.FromSeconds(60));
        Assert.True(same.ExitCode == 0 && same.StandardOutput == "Images are identical.\n", same.ToString());
    }
}
