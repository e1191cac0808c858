using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs;
using BlockMirror.Nbd.Server;
using BlockMirror.Qmp.Protocol;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// Everything a qemu-storage-daemon holds: the node graph, the jobs, the NBD server and its exports, and
/// the QMP commands that act on them. <c>blockmirror serve</c> builds one from its command line; tests build
/// one directly.
/// </summary>
public sealed partial class StorageDaemon : IAsyncDisposable
{
    readonly TaskCompletionSource _quit = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <param name="loggerFactory">Where the graph, the jobs and the NBD server log; none by default.</param>
    public StorageDaemon(TimeProvider? time = null, ILoggerFactory? loggerFactory = null)
    {
        // blockdev-add offers the NBD client (driver=nbd), which the block layer cannot name itself.
        BlockMirror.Nbd.Client.NbdDrivers.Register();
        LoggerFactory = loggerFactory;
        Graph = new BlockGraph(loggerFactory);
        Jobs = new JobManager(time, loggerFactory);
        Commands = new QmpCommandTable();
        AddBlockdevCommands();
        AddJobCommands();
        AddMirrorCommands();
        AddCommitCommands();
        AddExportCommands();
        AddObjectCommands();
        AddMiscCommands();
        AddBlockResizeCommand();
        AddWriteThresholdCommand();
        AddBlockdevCreateCommand();
        AddStatsCommands();
        AddBitmapCommands();
        AddTransactionCommand();
    }

    public BlockGraph Graph { get; }

    /// <summary>What the daemon's parts log to (null: nothing is logged).</summary>
    public ILoggerFactory? LoggerFactory { get; }

    public JobManager Jobs { get; }

    public QmpCommandTable Commands { get; }

    /// <summary>The NBD server, once <c>nbd-server-start</c> (or <c>--nbd-server</c>) started it.</summary>
    public NbdServer? Nbd { get; private set; }

    /// <summary>Daemon events for the monitors (job events travel on <see cref="JobManager.Events"/>).</summary>
    public event Action<Events.QmpEvent>? EventRaised;

    void Raise(string name, JsonObject data) => EventRaised?.Invoke(new Events.QmpEvent(name, data, Jobs.Time.GetUtcNow()));

    /// <summary>Removes an export and announces it (BLOCK_EXPORT_DELETED), as QEMU does for every way an export ends.</summary>
    async ValueTask DeleteExportAsync(NbdExport export)
    {
        await Nbd!.RemoveExportAsync(export).ConfigureAwait(false);
        Raise("BLOCK_EXPORT_DELETED", new JsonObject { ["id"] = export.Id });
    }

    /// <summary>Closes every export, then the NBD server.</summary>
    async ValueTask CloseExportsAsync()
    {
        if (Nbd is { } server)
        {
            foreach (var export in server.Exports.ToList())
            {
                await DeleteExportAsync(export).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// What qemu-storage-daemon does on quit (before it answers) and on SIGTERM, while its monitors still
    /// listen: closes its exports, then force-cancels every job and waits for each to end, so a client sees
    /// each export's deletion and each job's cancellation and state changes (aborting, BLOCK_JOB_CANCELLED,
    /// concluded, null). Idempotent: a second call finds nothing left.
    /// </summary>
    public async Task StopServingAsync()
    {
        await CloseExportsAsync().ConfigureAwait(false);
        await Jobs.CancelAllAsync().ConfigureAwait(false);
    }

    /// <summary>Completes when a client sent <c>quit</c>.</summary>
    public Task QuitRequested => _quit.Task;

    /// <summary>
    /// Starts the NBD server (<c>nbd-server-start</c>); only one runs at a time. <paramref name="tlsCreds"/>: the id
    /// of server TLS credentials every client must start TLS with. <paramref name="acceptAfter"/>: see <see cref="NbdServer.Start"/>.
    /// </summary>
    public EndPoint StartNbdServer(EndPoint endPoint, string? tlsCreds = null, string? tlsAuthz = null, Task? acceptAfter = null, uint maxConnections = NbdServer.DefaultMaxConnections)
    {
        if (Nbd is not null)
        {
            throw QmpException.Generic("NBD server already running");
        }

        // Checked before the socket is bound, so a refusal leaves no socket file behind (QEMU binds first).
        var tls = tlsCreds is null ? null : FindServerCredentials(tlsCreds);
        if (tlsAuthz is not null)
        {
            // QEMU checks the client certificate's name against an authz object; none can be created here.
            throw QmpException.Generic("TLS client authorization ('tls-authz') is not supported");
        }

        var server = new NbdServer(Graph, LoggerFactory);
        try
        {
            server.Start(endPoint, acceptAfter, tls, maxConnections);
        }
        catch (SocketException ex)
        {
            throw QmpException.Generic($"Failed to bind socket: {ex.Message}");
        }

        Nbd = server;
        return server.LocalEndPoint!;
    }

    async ValueTask StopNbdServerAsync()
    {
        await CloseExportsAsync().ConfigureAwait(false);
        if (Nbd is { } server)
        {
            Nbd = null;
            await server.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Shuts down as qemu-storage-daemon does on SIGTERM or quit: jobs cancelled, exports and the NBD server
    /// closed, then every node flushed and closed.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        await Jobs.CancelAllAsync().ConfigureAwait(false);
        await StopNbdServerAsync().ConfigureAwait(false);
        await Graph.DisposeAsync().ConfigureAwait(false);
    }

    static BlockJob FindBlockJob(JobManager jobs, string device) =>
        jobs.Find(device) as BlockJob ?? throw new QmpException("DeviceNotActive", $"Block job '{device}' not found");

    static Job FindJob(JobManager jobs, string id) => jobs.Find(id) ?? throw QmpException.Generic("Job not found");

    BlockNode FindNode(string name) =>
        Graph.FindNode(name) ?? throw QmpException.Generic($"Cannot find device='{name}' nor node-name='{name}'");

    static JsonNode? Empty => null;
}
