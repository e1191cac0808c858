using BlockMirror.Cli.Ui;

namespace BlockMirror.Cli.Tests;

/// <summary>The progress line: an ETA it cannot know is shown as unknown, and on a terminal it leaves the line ended.</summary>
public sealed class ProgressLineTests
{
    [Theory]
    [InlineData(0, 0, 0, "--:--")]          // the job has not measured its work yet
    [InlineData(0, 1 << 20, 0, "--:--")]    // work left, nothing moved
    [InlineData(1 << 20, 1 << 20, 0, "00:00")]
    [InlineData(0, 90 << 20, 1 << 20, "01:30")]
    [InlineData(0, 200L << 30, 1, "99:59")] // capped, never wrapped past an hour
    public void Eta_is_minutes_and_seconds_or_unknown(long done, long total, double rate, string expected) =>
        Assert.Equal(expected, ProgressLine.Eta(done, total, rate));

    [Fact]
    public void A_plain_line_says_unknown_for_an_unknown_eta()
    {
        var output = new StringWriter();
        var line = new ProgressLine(output, interactive: false);

        line.Update(0, 4 << 20, 0, "running", "  (2 write errors ignored)", force: true);

        Assert.Equal(" 0 % 0 B / 4 MiB  0 B/s  ETA --:--  running  (2 write errors ignored)" + Environment.NewLine, output.ToString());
    }

    [Fact]
    public void On_a_terminal_the_line_is_redrawn_in_place_and_ended_without_escape_sequences()
    {
        var output = new StringWriter();
        var line = new ProgressLine(output, interactive: true);

        line.Update(1 << 20, 4 << 20, 1 << 20, "running");
        line.Update(4 << 20, 4 << 20, 1 << 20, "completed");
        line.Finish();
        line.Finish();

        var text = output.ToString();
        Assert.StartsWith("\r[", text, StringComparison.Ordinal);
        Assert.EndsWith("completed" + Environment.NewLine, text, StringComparison.Ordinal);
        Assert.Equal(1, text.Count(c => c == '\n'));
        Assert.DoesNotContain('\u001b', text);
    }
}
