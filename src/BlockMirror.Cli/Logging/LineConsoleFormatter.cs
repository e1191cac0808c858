using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;

namespace BlockMirror.Cli.Logging;

/// <summary>The console logger's formatter for serve's stderr: <see cref="LogLine"/>'s plain or journal line.</summary>
sealed class LineConsoleFormatter(bool journal) : ConsoleFormatter(FormatterName)
{
    public const string FormatterName = "blockmirror";

    public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = logEntry.Formatter(logEntry.State, logEntry.Exception);
        LogLine.Write(textWriter, logEntry.LogLevel, logEntry.EventId, message, logEntry.Exception, journal);
    }

    /// <summary>
    /// The console provider writing to stderr through this formatter. Built by hand: the builder's
    /// AddConsoleFormatter binds options from configuration by reflection, which Native AOT cannot compile.
    /// </summary>
    public static ConsoleLoggerProvider CreateProvider(bool journal) => new(
        new FixedOptions<ConsoleLoggerOptions>(new ConsoleLoggerOptions
        {
            FormatterName = FormatterName,
            LogToStandardErrorThreshold = LogLevel.Trace,
            // A flood of debug lines must never hold up the request that logs one.
            QueueFullMode = ConsoleLoggerQueueFullMode.DropWrite,
        }),
        [new LineConsoleFormatter(journal)]);

    /// <summary>Options that never change.</summary>
    sealed class FixedOptions<[System.Diagnostics.CodeAnalysis.DynamicallyAccessedMembers(System.Diagnostics.CodeAnalysis.DynamicallyAccessedMemberTypes.PublicParameterlessConstructor)] T>(T value)
        : IOptionsMonitor<T>
    {
        public T CurrentValue => value;

        public T Get(string? name) => value;

        public IDisposable? OnChange(Action<T, string?> listener) => null;
    }
}
