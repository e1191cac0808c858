using System.Globalization;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// How serve writes one log entry: one line, always. Plain (stderr, a file): a UTC timestamp, the level, the
/// event name (what <c>--trace</c> matches) and the message. For the journal: the syslog priority as
/// <c>&lt;N&gt;</c>, which journald reads off each line and strips (it keeps its own time), then the event and message.
/// Control characters (a client's export name may hold a newline) are escaped, so one entry never reads as two.
/// </summary>
static class LogLine
{
    public static void Write(TextWriter writer, LogLevel level, EventId eventId, string message, Exception? exception, bool journal)
    {
        if (journal)
        {
            writer.Write('<');
            writer.Write(Priority(level));
            writer.Write('>');
        }
        else
        {
            writer.Write(DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture));
            writer.Write(' ');
            writer.Write(Word(level));
            writer.Write(' ');
        }

        if (eventId.Name is { } name)
        {
            writer.Write(name);
            writer.Write(": ");
        }

        WriteEscaped(writer, message);
        if (exception is not null)
        {
            writer.Write(": ");
            WriteEscaped(writer, exception.Message);
        }

        writer.Write('\n');
    }

    /// <summary>syslog(3) priorities, as sd-daemon(3) prefixes take them.</summary>
    static char Priority(LogLevel level) => level switch
    {
        LogLevel.Critical => '2',
        LogLevel.Error => '3',
        LogLevel.Warning => '4',
        LogLevel.Information => '6',
        _ => '7',
    };

    static string Word(LogLevel level) => level switch
    {
        LogLevel.Trace => "trace",
        LogLevel.Debug => "debug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warning",
        LogLevel.Error => "error",
        _ => "critical",
    };

    static void WriteEscaped(TextWriter writer, string text)
    {
        var start = 0;
        for (var i = 0; i < text.Length; i++)
        {
            if (char.IsControl(text[i]))
            {
                writer.Write(text.AsSpan(start, i - start));
                writer.Write($"\\x{(int)text[i]:x2}");
                start = i + 1;
            }
        }

        writer.Write(text.AsSpan(start));
    }
}
