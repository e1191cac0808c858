using BlockMirror.Block.Io;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Ui;

/// <summary>
/// One line of a copy's progress: on a terminal it is redrawn in place (bar, bytes, rates, forecast); through a pipe it
/// is printed as a plain line at most once per <see cref="PlainInterval"/>, so logs stay readable.
/// </summary>
sealed class ProgressLine(TextWriter output, bool interactive)
{
    public static readonly TimeSpan PlainInterval = TimeSpan.FromSeconds(1);

    const int BarWidth = 24;
    DateTimeOffset _lastPlain = DateTimeOffset.MinValue;
    int _lastWidth;

    public static ProgressLine ForConsole() => new(Console.Out, !Console.IsOutputRedirected);

    /// <summary>The words shown instead of an ETA when the copy is outrun by its writers (or stalled).</summary>
    public const string WillNotConverge = "will not converge at this rate";

    /// <summary>
    /// Shows a copy's state: offset and len, the copy and dirty rates, what remains, and the forecast (an
    /// ETA, or <see cref="WillNotConverge"/>); <paramref name="extra"/> is appended as is.
    /// </summary>
    public void Update(long done, long total, MirrorProgress progress, string state, string extra = "", bool force = false)
    {
        var fraction = total > 0 ? Math.Clamp((double)done / total, 0, 1) : 0;
        var forecast = state == "completed" ? "ETA 00:00" : progress.Converging == false ? WillNotConverge : $"ETA {Eta(progress.Eta)}";
        var numbers = $"{fraction,4:P0} {ByteSize.Format(done)} / {ByteSize.Format(total)}  copy {ByteSize.Format(progress.CopyRate)}/s  " +
            $"dirty {ByteSize.Format(progress.DirtyRate)}/s  remaining {ByteSize.Format(progress.Remaining)}  {forecast}  {state}{extra}";
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

    /// <summary>A forecast as mm:ss (at most 99:59), and <c>--:--</c> when there is none yet (the rates are not measured).</summary>
    public static string Eta(TimeSpan? eta)
    {
        if (eta is not { } known)
        {
            return "--:--";
        }

        var seconds = (int)Math.Ceiling(Math.Min(known.TotalSeconds, 99 * 60 + 59));
        return $"{seconds / 60:00}:{seconds % 60:00}";
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
