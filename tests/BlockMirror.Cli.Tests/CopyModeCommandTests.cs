using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>--copy-mode</c> on <c>mirror</c> and <c>commit</c>: each mode copies the whole image (nothing else writes
/// it here, so the mode changes only how a write would travel), the progress line shows the rates and the
/// forecast, and an unknown mode is refused in one line before anything is created.
/// </summary>
public sealed class CopyModeCommandTests : IDisposable
{
    const string ProgressPattern =
        @"^\s*\d+ % \S+ \S+ / \S+ \S+  copy \S+ \S+/s  dirty \S+ \S+/s  remaining \S+ \S+  (ETA (\d\d:\d\d|--:--)|will not converge at this rate)  \S+$";

    readonly TempDirectory _dir = new("blockmirror-copy-mode-test-");

    public void Dispose() => _dir.Dispose();

    [SkippableTheory]
    [InlineData("background")]
    [InlineData("write-blocking")]
    [InlineData("adaptive")]
    public async Task Mirror_in_each_copy_mode_gives_an_identical_image_and_a_readable_progress_line(string mode)
    {
        var source = _dir.File($"{mode}.raw");
        await QemuImages.CreateAsync(source, "8M", "write -P 0x11 0 2M", "write -P 0x22 5M 1M");
        var target = _dir.File($"{mode}-copy.raw");

        // Slow enough (3 MiB at 2 MiB/s) for more than one progress line.
        var result = await BlockMirrorCli.RunAsync("mirror", "--copy-mode", mode, "--speed", "2M", source, target);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Empty(result.StandardError);
        var progress = result.OutputLines[..^1];
        Assert.True(progress.Length >= 2, result.ToString());
        Assert.All(progress, line => Assert.Matches(ProgressPattern, line));
        Assert.EndsWith("  ETA 00:00  completed", progress[^1], StringComparison.Ordinal);
        await QemuImages.AssertIdenticalAsync(source, target);
    }

    [SkippableFact]
    public async Task Commit_in_adaptive_mode_commits_and_shows_progress()
    {
        ExternalTool.Require("qemu-io");
        var @base = _dir.File("base.qcow2");
        var top = _dir.File("top.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", @base, "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x10 0 3M", @base);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", @base, "-F", "qcow2", top);
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x31 1M 1M", top);
        var view = _dir.File("view.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", top, view);

        var result = await BlockMirrorCli.RunAsync("commit", "-p", "--copy-mode", "adaptive", top);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("Image committed.", result.OutputLines[^1]);
        Assert.All(result.OutputLines[..^1], line => Assert.Matches(ProgressPattern, line));
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", "-F", "raw", @base, view]);
        Assert.True(compare.ExitCode == 0, compare.StandardOutput + compare.StandardError);
    }

    [Theory]
    [InlineData("mirror")]
    [InlineData("commit")]
    public async Task An_unknown_copy_mode_is_refused_in_one_line_and_nothing_is_created(string command)
    {
        var target = _dir.File("never.raw");
        string[] arguments = command == "mirror"
            ? ["mirror", "--copy-mode", "__org.blockmirror_adaptive", _dir.File("missing.raw"), target]
            : ["commit", "--copy-mode", "__org.blockmirror_adaptive", _dir.File("missing.qcow2")];

        var result = await BlockMirrorCli.RunAsync(arguments);

        Assert.True(result.ExitCode == 1, result.ToString());
        var line = Assert.Single(result.ErrorLines);
        Assert.Equal($"blockmirror {command}: --copy-mode: unknown copy mode '__org.blockmirror_adaptive' (expected background, write-blocking or adaptive)", line);
        Assert.False(File.Exists(target));
    }
}
