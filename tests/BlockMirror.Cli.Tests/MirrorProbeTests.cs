using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror mirror</c> takes an image's format from its content unless told, as qemu-img does, and a raw
/// target found so is guarded as QEMU guards it: nothing may write an image header into its first block.
/// </summary>
public sealed class MirrorProbeTests : IDisposable
{
    const string Size = "4M";

    readonly TempDirectory _dir = new("blockmirror-mirror-probe-");

    public void Dispose() => _dir.Dispose();

    static async Task<string> FormatAsync(string image) =>
        (string)JsonNode.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", image))!["format"]!;

    [SkippableTheory]
    [InlineData("copy.img")]
    [InlineData("copy.qcow2")]
    public async Task A_qcow2_named_img_is_mirrored_as_the_guest_sees_it(string name)
    {
        // Cloud images are qcow2 files named .img: read as raw, the copy held the qcow2 file's bytes as its
        // guest content (or a byte copy where a qcow2 was asked for).
        var image = _dir.File("disk.img");
        File.Move(await ImageRecipes.BuildAsync("written", _dir), image);
        var target = _dir.File(name);

        var result = await BlockMirrorCli.RunAsync("mirror", image, target);

        Assert.True(result.ExitCode == 0 && result.StandardError.Length == 0, result.ToString());
        // A new target without -O takes the format its name gives (.qcow2), else the source's.
        Assert.Equal("qcow2", await FormatAsync(target));
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", image, target]);
        Assert.True(compare.ExitCode == 0, compare.StandardOutput + compare.StandardError);
    }

    /// <summary>A raw image whose first bytes are a qcow2 header (qemu-img's own, of an empty 4M qcow2), and an existing raw target with stale data after its first block.</summary>
    async Task<(string Source, string Target)> HeaderSourceAndRawTargetAsync()
    {
        var source = _dir.File("header.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", source, Size);
        await ExternalTool.RunCheckedAsync("qemu-img", "resize", "-q", "-f", "raw", source, Size);
        var target = _dir.File("target.raw");
        await QemuImages.CreateAsync(target, Size, "write -P 0x77 1M 1M");
        return (source, target);
    }

    static byte[] FirstBlock(string path)
    {
        using var stream = File.OpenRead(path);
        var block = new byte[512];
        stream.ReadExactly(block);
        return block;
    }

    [SkippableFact]
    public async Task A_probed_raw_target_refuses_a_qcow2_header_in_its_first_block()
    {
        ExternalTool.Require("qemu-img");
        var (source, target) = await HeaderSourceAndRawTargetAsync();
        var block0 = FirstBlock(target);

        var result = await BlockMirrorCli.RunAsync("mirror", "-f", "raw", source, target);

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains($"WARNING: Image format was not specified for '{target}' and probing guessed raw.", result.StandardError, StringComparison.Ordinal);
        Assert.StartsWith("blockmirror mirror: the mirror failed: Operation not permitted", result.ErrorLines[^1], StringComparison.Ordinal);
        Assert.Contains($"TARGET '{target}' existed before and was kept: it holds a partial copy", result.ErrorLines[^1], StringComparison.Ordinal);
        Assert.Equal(block0, FirstBlock(target));
        Assert.Equal("raw", await FormatAsync(target));
    }

    [SkippableFact]
    public async Task An_explicit_raw_target_format_lifts_the_restriction_as_in_qemu()
    {
        ExternalTool.Require("qemu-img");
        var (source, target) = await HeaderSourceAndRawTargetAsync();

        var result = await BlockMirrorCli.RunAsync("mirror", "-f", "raw", "-O", "raw", source, target);

        Assert.True(result.ExitCode == 0 && result.StandardError.Length == 0, result.ToString());
        await QemuImages.AssertIdenticalAsync(source, target);
    }
}
