using System.Diagnostics;
using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A mirror whose target cannot be written: the error names the file the user gave (never an internal node
/// such as '#block001'), and with <c>--on-target-error ignore</c> the progress line shows the errors it lets
/// pass, where it used to show "running" for ever. The target's writes fail because the process may not
/// make files larger than 1 MiB (RLIMIT_FSIZE, with SIGXFSZ ignored, so the writes fail with EFBIG).
/// </summary>
public sealed partial class MirrorErrorDisplayTests : IDisposable
{
    const int Limit = 1 << 20;

    readonly TempDirectory _dir = new("blockmirror-mirror-errors-");

    public void Dispose() => _dir.Dispose();

    /// <summary>A 4 MiB source full of data and an existing 4 MiB sparse raw target, made by the test (no limit).</summary>
    async Task<(string Source, string Target)> ImagesAsync()
    {
        var source = _dir.File("source.raw");
        await File.WriteAllBytesAsync(source, [.. Enumerable.Range(0, 4 << 20).Select(i => (byte)(i * 7 + 1))]);
        var target = _dir.File("target.raw");
        await using (var stream = File.Create(target))
        {
            stream.SetLength(4 << 20);
        }

        return (source, target);
    }

    /// <summary><c>blockmirror ARGS</c> run with files limited to 1 MiB.</summary>
    static ProcessStartInfo Limited(params string[] arguments)
    {
        var start = new ProcessStartInfo(FileSizeLimit.Shell) { UseShellExecute = false, RedirectStandardInput = true };
        foreach (var argument in FileSizeLimit.Arguments(Limit, BlockMirrorCli.Launcher.Concat(arguments)))
        {
            start.ArgumentList.Add(argument);
        }

        return start;
    }

    /// <summary>Runs a limited <c>mirror -O raw</c>, which must fail (exit 1); returns what it printed.</summary>
    static async Task<(string Stdout, string Stderr)> FailedMirrorAsync(string source, string target)
    {
        var start = Limited("mirror", "-O", "raw", source, target);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = await process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);

        Assert.True(process.ExitCode == 1, $"{await stdout}\n{stderr}");
        return (await stdout, stderr);
    }

    [SkippableFact]
    public async Task A_failed_write_is_reported_with_the_targets_file_name()
    {
        var (source, target) = await ImagesAsync();
        var (stdout, stderr) = await FailedMirrorAsync(source, target);
        var error = stderr.Trim().Split('\n')[^1];
        Assert.StartsWith("blockmirror mirror: the mirror failed: ", error, StringComparison.Ordinal);
        Assert.Contains($"'{target}': write at offset ", error, StringComparison.Ordinal);
        Assert.DoesNotContain("#block", stderr, StringComparison.Ordinal);
        Assert.EndsWith("failed", stdout.Trim().Split('\n')[^1], StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task A_new_target_the_limit_refuses_is_named_in_qemu_s_words_and_not_left_behind()
    {
        var (source, _) = await ImagesAsync();
        var target = _dir.File("new.raw");
        var (stdout, stderr) = await FailedMirrorAsync(source, target);
        Assert.Equal($"blockmirror mirror: Could not create '{target}': Could not resize file: File too large", stderr.Trim().Split('\n')[^1]);
        Assert.False(File.Exists(target));
    }

    [GeneratedRegex(@"  running  \((\d+) write errors? ignored\)$")]
    private static partial Regex IgnoredErrors();

    [SkippableFact]
    public async Task Errors_an_ignore_policy_lets_pass_show_on_the_progress_line()
    {
        var (source, target) = await ImagesAsync();

        var result = await SignalledRun.RunAsync(Limited("mirror", "-O", "raw", "--on-target-error", "ignore", source, target),
            line => IgnoredErrors().IsMatch(line), "INT");

        Assert.True(result.ExitCode == 130, result.ToString());
        Assert.Contains(result.OutputLines, line => IgnoredErrors().Match(line) is { Success: true } m && int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 0);
        Assert.Equal([$"blockmirror mirror: interrupted; TARGET '{target}' existed before and was kept: it holds a partial copy"], result.ErrorLines);
    }
}
