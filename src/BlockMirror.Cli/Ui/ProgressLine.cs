using BlockMirror.Block.Io;

namespace BlockMirror.Cli.Ui;

/// <summary>
/// One line of progress: on a terminal it is redrawn in place (bar, bytes, rate, ETA); through a pipe it
/// is printed as a plain line at most once per <see cref="PlainInterval"/>, so logs stay readable.
/// </summary>
sealed class ProgressLine(TextWriter output, bool interactive)
{
    public static readonly TimeSpan PlainInterval = TimeSpan.FromSeconds(1);

    const int BarWidth = 24;
    DateTimeOffset _lastPlain = DateTimeOffset.MinValue;
    int _lastWidth;

    public static ProgressLine ForConsole() => new(Console.Out, !Console.IsOutputRedirected);

    /// <summary>Shows the state; <paramref name="extra"/> is appended as is.</summary>
    public void Update(long done, long total, double bytesPerSecond, string state, string extra = "", bool force = false)
    {
        var fraction = total > 0 ? Math.Clamp((double)done / total, 0, 1) : 0;
        var numbers = $"{fraction,4:P0} {ByteSize.Format(done)} / {ByteSize.Format(total)}  {ByteSize.Format(bytesPerSecond)}/s  ETA {(state == "completed" ? "00:00" : Eta(done, total, bytesPerSecond))}  {state}{extra}";
        if (interactive)
        {
            var filled = (int)(fraction * BarWidth);
            var line = $"[{new string('#', filled)}{new string('.', BarWidth - filled)}] {numbers}";
            output.Write('\r' + line.PadRight(_lastWidth));
            _lastWidth = line.Length;
            return;
        }

        var now = DateTimeOffset.UtcNow;
        if (force || now - _lastPlain >= PlainInterval)
        {
            _lastPlain = now;
            output.WriteLine(numbers);
        }
    }

    /// <summary>
    /// Time left at the current rate as mm:ss (at most 99:59), 00:00 when nothing is left,
    /// and <c>--:--</c> when it cannot be known: work is left but nothing moved in the rate's window.
    /// </summary>
    public static string Eta(long done, long total, double bytesPerSecond)
    {
        if (total <= done && total > 0)
        {
            return "00:00";
        }

        // Nothing moved, or the job has not measured its work yet (0 of 0 bytes while running).
        if (bytesPerSecond <= 0 || total <= done)
        {
            return "--:--";
        }

        var seconds = Math.Min((total - done) / bytesPerSecond, 99 * 60 + 59);
        return $"{(int)seconds / 60:00}:{(int)seconds % 60:00}";
    }

    /// <summary>Ends the in-place line so the next output starts on a fresh one.</summary>
    public void Finish()
    {
        if (interactive && _lastWidth > 0)
        {
            output.WriteLine();
            _lastWidth = 0;
        }
    }
}
