using System.Threading.Channels;
using BlockMirror.Block.Drivers;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Logging;

/// <summary>
/// <c>--trace file=FILE</c>: the log goes to FILE, in <see cref="LogLine"/>'s plain lines, written by one
/// background task so no request waits for the disk. FILE is opened for appending, never truncated (QEMU
/// truncates; a log file given by mistake as an image's name must not cost the image its data). Entries
/// beyond <see cref="Capacity"/> waiting to be written are dropped and counted, as the console logger does.
/// </summary>
sealed class FileLoggerProvider : ILoggerProvider
{
    const int Capacity = 10_000;

    readonly StreamWriter _writer;
    readonly Channel<string> _lines = Channel.CreateBounded<string>(new BoundedChannelOptions(Capacity)
    {
        SingleReader = true,
        FullMode = BoundedChannelFullMode.DropWrite,
    });

    readonly Task _writing;
    long _dropped;

    /// <exception cref="IOException">The file cannot be opened.</exception>
    /// <exception cref="UnauthorizedAccessException">The file cannot be opened.</exception>
    public FileLoggerProvider(string path)
    {
        Path = System.IO.Path.GetFullPath(path);
        var file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite);
        if (ImageFiles.IsOpenAsImage(file.SafeFileHandle))
        {
            // Appended lines would land where the image's owner is about to write its clusters.
            file.Dispose();
            throw new IOException("it is an image file another process has open");
        }

        _writer = new StreamWriter(file);
        _writing = Task.Run(WriteAsync);
    }

    public string Path { get; }

    public ILogger CreateLogger(string categoryName) => new FileLogger(this);

    void Add(string line)
    {
        if (!_lines.Writer.TryWrite(line))
        {
            Interlocked.Increment(ref _dropped);
        }
    }

    async Task WriteAsync()
    {
        var reader = _lines.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            while (reader.TryRead(out var line))
            {
                await _writer.WriteAsync(line).ConfigureAwait(false);
            }

            if (Interlocked.Exchange(ref _dropped, 0) is var dropped and > 0)
            {
                await _writer.WriteAsync($"{dropped} log entries dropped: the log file could not keep up\n").ConfigureAwait(false);
            }

            await _writer.FlushAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Writes out what is queued and closes the file.</summary>
    public void Dispose()
    {
        _lines.Writer.TryComplete();
        _writing.GetAwaiter().GetResult();
        _writer.Dispose();
    }

    sealed class FileLogger(FileLoggerProvider provider) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        // The factory's filters decide what reaches this logger.
        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            using var line = new StringWriter();
            LogLine.Write(line, logLevel, eventId, formatter(state, exception), exception, journal: false);
            provider.Add(line.ToString());
        }
    }
}
