using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>--copy-mode</c> on <c>mirror</c> and <c>commit</c>: each mode copies the whole image (nothing else writes
/// it here, so the mode changes only how a write would travel), the progress line shows the rates and the
/// forecast, and an unknown mode is refused in one line before anything is created. (An adaptive commit:
/// CommitCommandTests.)
/// </summary>
public sealed class CopyModeCommandTests : IDisposable
{
    /// <summary>The progress line of mirror and commit -p, through a pipe.</summary>
    internal const string ProgressPattern =
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
