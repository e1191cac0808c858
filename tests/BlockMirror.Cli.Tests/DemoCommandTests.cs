namespace BlockMirror.Cli.Tests;

/// <summary><c>blockmirror demo</c>: the whole job on built-in data, and its refusals.</summary>
public sealed class DemoCommandTests
{
    [Fact]
    public async Task A_small_demo_passes()
    {
        var result = await BlockMirrorCli.RunAsync("demo", "--size", "16M", "--write-rate", "4M");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains(result.OutputLines, line => line.StartsWith("PASS", StringComparison.Ordinal));
        Assert.DoesNotContain(result.OutputLines, line => line.StartsWith("FAIL", StringComparison.Ordinal));
        Assert.Contains(result.OutputLines, line => line.StartsWith("pivot done", StringComparison.Ordinal));
        Assert.DoesNotContain('\r', result.StandardOutput);
        Assert.Empty(result.StandardError);
    }

    [Fact]
    public async Task The_adaptive_demo_blocks_writes_when_the_writers_outrun_the_copy_and_passes()
    {
        // Writers at four times the copy's limit: in background the job would not converge. The progress
        // line's forecast is not asserted: on an 8 MiB disk the writers re-dirty what the copy just cleaned,
        // so the dirty rate settles near the copy rate and "will not converge" comes and goes with the
        // machine's load; the policy's verdict (with its margin) is what the "blocked from" line shows.
        var result = await BlockMirrorCli.RunAsync("demo", "--size", "8M", "--write-rate", "16M", "--speed", "4M", "--copy-mode", "adaptive");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains(result.OutputLines, line => line.StartsWith("copy mode adaptive: guest writes blocked (written to both images) from ", StringComparison.Ordinal));
        Assert.Contains(result.OutputLines, line => line.StartsWith("PASS", StringComparison.Ordinal));
        Assert.Empty(result.StandardError);
    }

    [Theory]
    [InlineData("--size", "512K", "--size must be a multiple of 64K between 1M and 2G, got 512K")]
    [InlineData("--size", "3G", "--size must be a multiple of 64K between 1M and 2G, got 3G")]
    [InlineData("--size", "1000000", "--size must be a multiple of 64K between 1M and 2G, got 1000000")]
    [InlineData("--size", "big", "invalid --size 'big'")]
    [InlineData("--writers", "0", "--writers must be between 1 and 64, got 0")]
    [InlineData("--writers", "65", "--writers must be between 1 and 64, got 65")]
    [InlineData("--write-rate", "fast", "invalid --write-rate 'fast'")]
    [InlineData("--copy-mode", "fast", "--copy-mode: unknown copy mode 'fast' (expected background, write-blocking or adaptive)")]
    public async Task Bad_demo_options_are_refused_with_one_line(string option, string value, string message)
    {
        var result = await BlockMirrorCli.RunAsync("demo", option, value);

        Assert.True(result.ExitCode == 1, result.ToString());
        var line = Assert.Single(result.ErrorLines);
        Assert.StartsWith("blockmirror demo: ", line, StringComparison.Ordinal);
        Assert.Contains(message, line, StringComparison.Ordinal);
        Assert.Empty(result.StandardOutput);
    }

    [Fact]
    public async Task A_non_numeric_writer_count_is_refused_by_the_parser()
    {
        var result = await BlockMirrorCli.RunAsync("demo", "--writers", "x");

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains("'x'", result.StandardError, StringComparison.Ordinal);
        Assert.Contains("--writers", result.StandardError, StringComparison.Ordinal);
    }
}
