using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Logging;

/// <summary>The words <c>--log-level</c> takes, and the default.</summary>
static class LogLevels
{
    /// <summary>
    /// qemu-storage-daemon prints nothing but warnings and errors; so does serve by default, so scripts written
    /// for it see the same stderr. <c>info</c> adds connections, exports, jobs and graph changes.
    /// </summary>
    public const LogLevel Default = LogLevel.Warning;

    static readonly (string Word, LogLevel Level)[] Words =
    [
        ("trace", LogLevel.Trace), ("debug", LogLevel.Debug), ("info", LogLevel.Information),
        ("warning", LogLevel.Warning), ("error", LogLevel.Error), ("none", LogLevel.None),
    ];

    public static LogLevel Parse(string word)
    {
        foreach (var (candidate, level) in Words)
        {
            if (candidate.Equals(word, StringComparison.OrdinalIgnoreCase))
            {
                return level;
            }
        }

        throw new Commands.UsageException($"--log-level {word}: unknown level (expected {string.Join(", ", Words.Select(w => w.Word))})");
    }
}
