namespace BlockMirror.Cli.Ui;

/// <summary>
/// Leaves the terminal as blockmirror found it. .NET's console, the first time it is used with a terminal
/// attached, switches the terminal to keypad-transmit mode (terminfo's smkx, <c>ESC [?1h ESC =</c>: the
/// cursor keys then send application sequences) and never switches it back (dotnet/corefx#32805, still so
/// in .NET 10: seen through script(1)); a shell such as ksh then misreads the arrow keys. The progress line
/// itself writes no escape sequence (it redraws with '\r' and ends with a newline).
/// </summary>
static class TerminalState
{
    /// <summary>terminfo's rmkx for xterm and its kin (screen, tmux, VT100): normal cursor keys, numeric keypad.</summary>
    const string KeypadLocal = "\u001b[?1l\u001b>";

    /// <summary>Switches the keypad back, on the terminal .NET switched, once everything else is written.</summary>
    public static void Restore()
    {
        // With neither standard input nor output on a terminal .NET set nothing up; a terminal without
        // capabilities (TERM unset or dumb) got nothing either.
        if ((Console.IsInputRedirected && Console.IsOutputRedirected) ||
            Environment.GetEnvironmentVariable("TERM") is not { Length: > 0 } term || term == "dumb")
        {
            return;
        }

        try
        {
            Console.Out.Flush();
            Console.Error.Flush();
            using var tty = new FileStream("/dev/tty", FileMode.Open, FileAccess.Write);
            tty.Write(System.Text.Encoding.ASCII.GetBytes(KeypadLocal));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // No controlling terminal (a daemon, a detached session): nothing to restore.
        }
    }
}
