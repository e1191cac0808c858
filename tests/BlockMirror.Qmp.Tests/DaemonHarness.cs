using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Qmp.Commands;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// A <see cref="StorageDaemon"/> in the test's process, driven by QMP command names and JSON arguments as
/// a monitor would (failures become the QMP error text), with its job events recorded.
/// </summary>
sealed class DaemonHarness : IAsyncDisposable
{
    readonly IDisposable _subscription;

    /// <param name="log">Where the daemon logs, if anywhere.</param>
    public DaemonHarness(Microsoft.Extensions.Logging.ILoggerFactory? log = null)
    {
        Daemon = new StorageDaemon(loggerFactory: log);
        _subscription = Daemon.Jobs.Events.Subscribe(Events.Enqueue);
    }

    public StorageDaemon Daemon { get; }

    public ConcurrentQueue<JobEvent> Events { get; } = new();

    /// <summary>Runs a command; throws <see cref="QmpException"/> with the text a client would get.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments = null)
    {
        Assert.True(Daemon.Commands.TryGet(command, out var declared), $"no command {command}");
        using var document = JsonDocument.Parse((arguments ?? []).ToJsonString());
        try
        {
            return await declared.InvokeAsync(new QmpArguments(document.RootElement.Clone()), CancellationToken.None);
        }
        catch (QmpException)
        {
            throw;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw QmpException.Generic(ex.Message);
        }
    }

    /// <summary>The error a command answers with (it must fail).</summary>
    public async Task<string> ErrorAsync(string command, JsonObject arguments) =>
        (await Assert.ThrowsAsync<QmpException>(() => ExecuteAsync(command, arguments))).Message;

    public async Task WaitAsync(Func<JobEvent, bool> condition, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (!Events.Any(condition))
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting; events so far: {string.Join(", ", Events.Select(Describe))}");
            await Task.Delay(10);
        }
    }

    public Task WaitStatusAsync(string id, JobStatus status) =>
        WaitAsync(e => e is JobStatusChangeEvent s && s.Id == id && s.Status == status);

    /// <summary>The job's events as QEMU names them, e.g. "JOB_STATUS_CHANGE:ready", "BLOCK_JOB_READY".</summary>
    public static string Describe(JobEvent e) => e is JobStatusChangeEvent s ? $"{e.Name}:{s.Status.ToString().ToLowerInvariant()}" : e.Name;

    public async ValueTask DisposeAsync()
    {
        _subscription.Dispose();
        await Daemon.DisposeAsync();
    }
}
