using Microsoft.Extensions.Logging;

namespace BlockMirror.TestKit;

/// <summary>One entry a <see cref="LogCollector"/> received: level, event name and the formatted message.</summary>
public sealed record LogRecord(LogLevel Level, int EventId, string? EventName, string Message)
{
    public override string ToString() => $"{Level} {EventName}: {Message}";
}

/// <summary>
/// An in-process logger factory for tests: every entry at or above <see cref="MinimumLevel"/> is kept, and a
/// test waits for the one it expects (the code under test logs from its own tasks, after the client's step).
/// </summary>
public sealed class LogCollector(LogLevel minimumLevel = LogLevel.Trace) : ILoggerFactory
{
    readonly List<LogRecord> _records = [];
    readonly List<(Func<LogRecord, bool> Match, TaskCompletionSource<LogRecord> Found)> _waiters = [];

    public LogLevel MinimumLevel => minimumLevel;

    public IReadOnlyList<LogRecord> Records
    {
        get
        {
            lock (_records)
            {
                return [.. _records];
            }
        }
    }

    /// <summary>The first entry (logged already or to come) that matches; fails after <paramref name="seconds"/> with what was logged.</summary>
    public async Task<LogRecord> WaitForAsync(Func<LogRecord, bool> match, int seconds = 30)
    {
        var found = new TaskCompletionSource<LogRecord>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_records)
        {
            if (_records.Find(r => match(r)) is { } record)
            {
                return record;
            }

            _waiters.Add((match, found));
        }

        try
        {
            return await found.Task.WaitAsync(TimeSpan.FromSeconds(seconds));
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"no matching log entry; logged:\n{string.Join("\n", Records)}");
        }
    }

    /// <summary>The first entry of event <paramref name="eventName"/>.</summary>
    public Task<LogRecord> WaitForAsync(string eventName) => WaitForAsync(r => r.EventName == eventName);

    void Add(LogRecord record)
    {
        lock (_records)
        {
            _records.Add(record);
            foreach (var waiter in _waiters.Where(w => w.Match(record)).ToList())
            {
                _waiters.Remove(waiter);
                waiter.Found.TrySetResult(record);
            }
        }
    }

    public ILogger CreateLogger(string categoryName) => new Logger(this);

    public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException();

    public void Dispose()
    {
    }

    sealed class Logger(LogCollector collector) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= collector.MinimumLevel && logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                collector.Add(new LogRecord(logLevel, eventId.Id, eventId.Name, formatter(state, exception)));
            }
        }
    }
}
