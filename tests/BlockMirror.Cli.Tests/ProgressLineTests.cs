using BlockMirror.Cli.Ui;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The progress line: rates and what remains, an ETA it cannot know shown as unknown, a copy outrun by its
/// writers said in words, and on a terminal the line left ended.
/// </summary>
public sealed class ProgressLineTests
{
    const long MiB = 1 << 20;

    [Theory]
    [InlineData(null, "--:--")]       // not measured yet
    [InlineData(0.0, "00:00")]
    [InlineData(89.2, "01:30")]       // rounded up: never "00:00" while work is left
    [InlineData(1e9, "99:59")]        // capped, never wrapped past an hour
    public void Eta_is_minutes_and_seconds_or_unknown(double? seconds, string expected) =>
        Assert.Equal(expected, ProgressLine.Eta(seconds is { } s ? TimeSpan.FromSeconds(s) : null));

    [Fact]
    public void A_plain_line_says_unknown_for_an_unmeasured_eta()
    {
        var output = new StringWriter();
        var line = new ProgressLine(output, interactive: false);

        line.Update(0, 4 * MiB, new MirrorProgress(4 * MiB, 0, 0, Measured: false), "running", "  (2 write errors ignored)", force: true);

        Assert.Equal(" 0 % 0 B / 4 MiB  copy 0 B/s  dirty 0 B/s  remaining 4 MiB  ETA --:--  running  (2 write errors ignored)" + Environment.NewLine, output.ToString());
    }

    [Fact]
    public void A_plain_line_shows_the_rates_what_remains_and_the_forecast()
    {
        var output = new StringWriter();
        var line = new ProgressLine(output, interactive: false);

        line.Update(6 * MiB, 16 * MiB, new MirrorProgress(10 * MiB, 8 * MiB, 3 * MiB, Measured: true), "running", force: true);
        line.Update(6 * MiB, 16 * MiB, new MirrorProgress(10 * MiB, 8 * MiB, 9 * MiB, Measured: true), "running", force: true);

        Assert.Equal(
            [
                "38 % 6 MiB / 16 MiB  copy 8 MiB/s  dirty 3 MiB/s  remaining 10 MiB  ETA 00:02  running",
                "38 % 6 MiB / 16 MiB  copy 8 MiB/s  dirty 9 MiB/s  remaining 10 MiB  will not converge at this rate  running",
            ],
            output.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void On_a_terminal_the_line_is_redrawn_in_place_and_ended_without_escape_sequences()
    {
        var output = new StringWriter();
        var line = new ProgressLine(output, interactive: true);

        line.Update(MiB, 4 * MiB, new MirrorProgress(3 * MiB, MiB, 0, Measured: true), "running");
        line.Update(4 * MiB, 4 * MiB, new MirrorProgress(0, MiB, 0, Measured: true), "completed");
        line.Finish();
        line.Finish();

        var text = output.ToString();
        Assert.StartsWith("\r[", text, StringComparison.Ordinal);
        Assert.EndsWith("completed" + Environment.NewLine, text, StringComparison.Ordinal);
        Assert.Equal(1, text.Count(c => c == '\n'));
        Assert.DoesNotContain('\u001b', text);
    }
}
