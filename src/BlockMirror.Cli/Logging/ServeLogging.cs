using BlockMirror.Cli.Commands;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// serve's logging, from its <c>--log-level</c> and <c>-T</c>/<c>--trace</c> options: to stderr (in the
/// journal's format when <see cref="JournalStream"/> says stderr is the journal), or to the file of
/// <c>--trace file=</c>. Dispose it last: it writes out what is still queued.
/// </summary>
sealed class ServeLogging : IDisposable
{
    /// <summary>The options this class reads; serve hands them over in order, as spelled (for messages).</summary>
    public static readonly string[] Options = ["--log-level", "--trace", "-T"];

    readonly ILoggerProvider? _provider;

    ServeLogging(ILoggerFactory factory, ILoggerProvider? provider, string? logFile)
    {
        Factory = factory;
        _provider = provider;
        LogFile = logFile;
        Serve = factory.CreateLogger("BlockMirror.Cli.Serve");
    }

    /// <summary>What the daemon's parts log to.</summary>
    public ILoggerFactory Factory { get; }

    /// <summary>serve's own events (<see cref="ServeLog"/>).</summary>
    public ILogger Serve { get; }

    /// <summary>The full path of the log file, when the log goes to one.</summary>
    public string? LogFile { get; }

    /// <summary>
    /// Reads the options and sets logging up; returns null when <c>--trace help</c> listed the events (serve
    /// then exits successfully, as qemu-storage-daemon does). Warnings go to <paramref name="warnings"/> at once.
    /// </summary>
    /// <exception cref="UsageException">A bad level, trace option, events file or log file.</exception>
    public static ServeLogging? Create(IEnumerable<(string Option, string Value, string Spelling)> options, TextWriter warnings)
    {
        var level = LogLevels.Default;
        var trace = new TraceSettings(warnings);
        foreach (var (option, value, spelling) in options)
        {
            if (option == "--log-level")
            {
                level = LogLevels.Parse(value);
                continue;
            }

            trace.Apply(value, spelling);
            if (trace.ListedEvents)
            {
                return null;
            }
        }

        var traced = trace.EnabledEvents();
        if (level == LogLevel.None && traced.Count == 0)
        {
            return new ServeLogging(NullLoggerFactory.Instance, null, null);
        }

        var file = trace.File is { } path ? OpenFile(path, trace.FileLocation!) : null;
        var provider = (ILoggerProvider?)file ?? LineConsoleFormatter.CreateProvider(journal: JournalStream.IsStderr());
        var factory = LoggerFactory.Create(builder =>
        {
            // With traced events everything reaches the filter below, which knows the events.
            builder.SetMinimumLevel(traced.Count > 0 ? LogLevel.Trace : level);
            builder.AddProvider(provider);
        });
        return new ServeLogging(traced.Count > 0 ? new TracingLoggerFactory(factory, level, traced) : factory, provider, file?.Path);
    }

    static FileLoggerProvider OpenFile(string path, string location)
    {
        try
        {
            return path.Length == 0 ? throw new FileNotFoundException() : new FileLoggerProvider(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UsageException($"{location}: Error opening logfile {path}: {TraceSettings.Describe(ex)}");
        }
    }

    public void Dispose()
    {
        // The provider was handed to the factory ready-made, so closing it (which writes out its queue) is ours.
        Factory.Dispose();
        _provider?.Dispose();
    }
}
