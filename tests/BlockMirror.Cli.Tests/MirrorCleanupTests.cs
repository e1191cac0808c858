using System.Buffers.Binary;
using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A mirror that fails (the source cannot be read) or is interrupted (SIGINT) removes the target it created,
/// so that the next attempt does not meet a half-written file; a target that existed before stays, and the
/// error says that it holds a partial copy.
/// </summary>
public sealed partial class MirrorCleanupTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-mirror-cleanup-");

    public void Dispose() => _dir.Dispose();

    /// <summary>
    /// The 'compressed' recipe with the deflate stream of its first compressed cluster overwritten: qemu-img
    /// cannot read it either (checked here, so the test does not rest on our reading of the damage).
    /// </summary>
    async Task<string> UnreadableSourceAsync()
    {
        var image = await ImageRecipes.BuildAsync("compressed", _dir);
        var layout = ImageRecipes.ReadLayout(image);
        var entry = new byte[8];
        using (var stream = File.OpenRead(image))
        {
            stream.Position = layout.L1TableOffset;
            stream.ReadExactly(entry);
            stream.Position = (long)(BinaryPrimitives.ReadUInt64BigEndian(entry) & 0x00ff_ffff_ffff_fe00UL);
            stream.ReadExactly(entry);
        }

        var l2 = BinaryPrimitives.ReadUInt64BigEndian(entry);
        Assert.True((l2 & (1UL << 62)) != 0, "the recipe's first cluster should be compressed");
        var hostOffset = (long)(l2 & ((1UL << (62 - (layout.ClusterBits - 8))) - 1));
        ImageRecipes.Poke(image, hostOffset, [.. Enumerable.Repeat((byte)0xff, 64)]);

        var convert = await ExternalTool.RunAsync("qemu-img", ["convert", "-O", "raw", image, _dir.File("qemu-view.raw")]);
        Assert.True(convert.ExitCode != 0, "qemu-img convert read the damaged image; the test needs one it cannot read");
        return image;
    }

    [SkippableTheory]
    [InlineData("copy.qcow2")]
    [InlineData("copy.raw")]
    public async Task A_failed_mirror_removes_the_target_it_created(string name)
    {
        var source = await UnreadableSourceAsync();
        var target = _dir.File(name);

        var result = await BlockMirrorCli.RunAsync("mirror", source, target);

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.StartsWith("blockmirror mirror: the mirror failed: ", result.ErrorLines[^1], StringComparison.Ordinal);
        Assert.False(File.Exists(target), $"the failed mirror left {target} behind");
    }

    [SkippableFact]
    public async Task A_mirror_onto_a_link_that_names_no_file_makes_that_file_and_a_failed_one_removes_only_it()
    {
        // qemu-img convert makes the file a dangling link names; so does the mirror, and the link stays a link.
        Directory.CreateDirectory(_dir.File("images"));
        var source = _dir.File("source.raw");
        await QemuImages.CreateAsync(source, "2M", "write -P 0x5a 0 2M");
        foreach (var (tool, link) in new[] { ("qemu-img", "theirs.raw"), ("blockmirror", "ours.raw") })
        {
            File.CreateSymbolicLink(_dir.File(link), $"images/{link}");
            var run = tool == "qemu-img"
                ? (await ExternalTool.RunAsync("qemu-img", ["convert", "-O", "raw", source, _dir.File(link)])).ExitCode
                : (await BlockMirrorCli.RunAsync("mirror", source, _dir.File(link))).ExitCode;
            Assert.Equal(0, run);
            Assert.NotNull(new FileInfo(_dir.File(link)).LinkTarget);
            await QemuImages.AssertIdenticalAsync(source, _dir.File($"images/{link}"));
        }

        // A failed mirror removes the file it made there, not the link.
        File.CreateSymbolicLink(_dir.File("failed.qcow2"), "images/failed.qcow2");
        var failed = await BlockMirrorCli.RunAsync("mirror", await UnreadableSourceAsync(), _dir.File("failed.qcow2"));
        Assert.True(failed.ExitCode == 1, failed.ToString());
        Assert.NotNull(new FileInfo(_dir.File("failed.qcow2")).LinkTarget);
        Assert.False(File.Exists(_dir.File("images/failed.qcow2")), "the failed mirror left the file it made behind");
    }

    [SkippableFact]
    public async Task A_failed_mirror_keeps_an_existing_target_and_says_it_holds_a_partial_copy()
    {
        var source = await UnreadableSourceAsync();
        var target = _dir.File("existing.raw");
        await QemuImages.CreateAsync(target, "2M", "write -P 0x77 0 2M");

        var result = await BlockMirrorCli.RunAsync("mirror", "-O", "raw", source, target);

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains($"TARGET '{target}' existed before and was kept: it holds a partial copy", result.ErrorLines[^1], StringComparison.Ordinal);
        Assert.True(File.Exists(target));
    }

    [GeneratedRegex(@"^\s*(\d+) % ")]
    private static partial Regex ProgressPercent();

    /// <summary>
    /// Starts a mirror slowed down by --speed, sends <paramref name="signal"/> once a progress line shows it
    /// copying, and returns what the interrupted command printed and its exit status.
    /// </summary>
    static Task<CliResult> InterruptedMirrorAsync(string source, string target, string signal, params string[] options) =>
        SignalledRun.RunAsync(BlockMirrorCli.StartInfo(["mirror", "--speed", "2M", .. options, source, target]),
            line => ProgressPercent().Match(line) is { Success: true } m && int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 0,
            signal);

    /// <summary>A 64 MiB sparse raw source with 16 MiB of data: 8 s at --speed 2M, long enough to be interrupted.</summary>
    async Task<string> SlowSourceAsync()
    {
        var source = _dir.File("source.raw");
        await QemuImages.CreateAsync(source, "64M", "write -P 0x5a 0 16M");
        return source;
    }

    [SkippableTheory]
    [InlineData("copy.qcow2")]
    [InlineData("copy.raw")]
    public async Task An_interrupted_mirror_removes_the_target_it_created(string name)
    {
        var source = await SlowSourceAsync();
        var target = _dir.File(name);

        var result = await InterruptedMirrorAsync(source, target, "INT");

        Assert.True(result.ExitCode == 130, result.ToString());
        Assert.Equal(["blockmirror mirror: interrupted"], result.ErrorLines);
        Assert.False(File.Exists(target), $"the interrupted mirror left {target} behind");
    }

    [SkippableFact]
    public async Task A_terminated_mirror_exits_143_with_one_line_and_removes_the_target_it_created()
    {
        var source = await SlowSourceAsync();
        var target = _dir.File("copy.qcow2");

        var result = await InterruptedMirrorAsync(source, target, "TERM");

        Assert.True(result.ExitCode == 143, result.ToString());
        Assert.Equal(["blockmirror mirror: terminated"], result.ErrorLines);
        Assert.EndsWith("cancelled", result.OutputLines[^1], StringComparison.Ordinal);
        Assert.False(File.Exists(target), $"the terminated mirror left {target} behind");
    }

    [SkippableFact]
    public async Task An_interrupted_mirror_keeps_an_existing_target_and_says_it_holds_a_partial_copy()
    {
        var source = await SlowSourceAsync();
        var target = _dir.File("existing.raw");
        await QemuImages.CreateAsync(target, "64M");

        var result = await InterruptedMirrorAsync(source, target, "INT", "-O", "raw");

        Assert.True(result.ExitCode == 130, result.ToString());
        Assert.Equal($"blockmirror mirror: interrupted; TARGET '{target}' existed before and was kept: it holds a partial copy", result.ErrorLines[^1]);
        Assert.True(File.Exists(target));
    }
}
