using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// The level and the <c>--trace</c> events together: an entry is written when its level is at least the
/// <c>--log-level</c>, or when <c>--trace</c> turned its event on, whatever its level. Used only when some
/// event is traced (the inner factory then lets everything through); otherwise the inner factory's own
/// minimum level does the job and this costs nothing.
/// </summary>
sealed class TracingLoggerFactory(ILoggerFactory inner, LogLevel level, HashSet<string> traced) : ILoggerFactory
{
    public ILogger CreateLogger(string categoryName) => new TracingLogger(inner.CreateLogger(categoryName), level, traced);

    public void AddProvider(ILoggerProvider provider) => inner.AddProvider(provider);

    public void Dispose() => inner.Dispose();

    sealed class TracingLogger(ILogger inner, LogLevel level, HashSet<string> traced) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => inner.BeginScope(state);

        // Any level may carry a traced event: the event is known only in Log.
        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= level || eventId.Name is { } name && traced.Contains(name))
            {
                inner.Log(logLevel, eventId, state, exception, formatter);
            }
        }
    }
}
