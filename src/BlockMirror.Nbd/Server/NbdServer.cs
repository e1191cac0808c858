using System.Collections.Concurrent;
using System.Net;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Net.Listening;
using BlockMirror.Net.Tls;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// The NBD server of <c>nbd-server-start</c> / <c>--nbd-server</c>: one listening socket (TCP or Unix), any
/// number of clients, and the exports of <c>block-export-add</c>. A client that misbehaves loses its own
/// connection and nothing else.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    readonly BlockGraph _graph;
    readonly ConcurrentDictionary<string, NbdExport> _exports = new(StringComparer.Ordinal);
    SocketListener? _listener;
    long _connections;

    /// <param name="loggerFactory">Where exports, connections and refused requests are logged (<see cref="NbdServerLog"/>); none by default.</param>
    public NbdServer(BlockGraph graph, ILoggerFactory? loggerFactory = null)
    {
        _graph = graph;
        Logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger<NbdServer>();
        NbdMetrics.Track(this);
    }

    internal ILogger Logger { get; }

    /// <summary>
    /// Buffers for payloads: aligned, so an O_DIRECT node takes them without a bounce. Up to 32 MiB per size
    /// class (128 buffers of 256 KiB): nbdcopy keeps 64 requests of 256 KiB in flight over 4 connections,
    /// and a buffer the pool had dropped came back as fresh memory, zeroed and faulted in on every request.
    /// </summary>
    internal AlignedBufferPool Buffers { get; } = new(4096, maxBytesPerClass: 32 << 20);

    /// <summary>Where the server listens, once started (the port is the real one when 0 was asked for).</summary>
    public EndPoint? LocalEndPoint => _listener?.LocalEndPoint;

    /// <summary>
    /// Clients served at once at most (QEMU's <c>max-connections</c>; 0: no limit). Others wait in the listen backlog
    /// until one leaves; with 1 the exports do not advertise NBD_FLAG_CAN_MULTI_CONN, as QEMU's do not.
    /// </summary>
    public uint MaxConnections { get; private set; }

    /// <summary>
    /// <c>max-connections</c> when none is given: QEMU's since the fix for CVE-2024-7409 (9.1, and Debian's 7.2),
    /// so that clients which connect and never leave cannot take every descriptor and the memory each one holds.
    /// </summary>
    public const uint DefaultMaxConnections = 100;

    /// <summary>The credentials clients must start TLS with, or null when the server speaks plain NBD.</summary>
    public TlsCredentials? Tls { get; private set; }

    /// <summary>The exports in the order they were added, as QEMU's server keeps and lists them (NBD_OPT_LIST).</summary>
    public IEnumerable<NbdExport> Exports => _exports.Values.OrderBy(e => e.Order);

    /// <summary>
    /// Binds and starts accepting clients (with <paramref name="acceptAfter"/>, once it completes: until then
    /// they wait in the listen backlog, as qemu-storage-daemon's do while it applies its command line).
    /// A Unix socket path must not exist yet.
    /// </summary>
    /// <remarks>
    /// With <paramref name="tls"/> (server credentials), clients must start TLS (NBD_OPT_STARTTLS) before any
    /// other option, and the rest of the connection runs over the session.
    /// </remarks>
    public void Start(EndPoint endPoint, Task? acceptAfter = null, TlsCredentials? tls = null, uint maxConnections = DefaultMaxConnections)
    {
        if (tls is { Endpoint: not TlsEndpoint.Server })
        {
            throw new ArgumentException("Expected TLS credentials for a server endpoint", nameof(tls));
        }

        Tls = tls;
        if (_listener is not null)
        {
            throw new InvalidOperationException("NBD server already running");
        }

        _listener = SocketListener.Bind(endPoint, backlog: 64);
        MaxConnections = maxConnections;
        _listener.Start(ServeAsync, acceptAfter, maxConnections: (int)Math.Min(maxConnections, int.MaxValue));
        NbdServerLog.ServerStarted(Logger, _listener.LocalEndPoint, tls is null ? "" : " (TLS required)");
    }

    async Task ServeAsync(Stream stream, CancellationToken cancellationToken)
    {
        // How the log names this client: a number of its own (a Unix socket's peer has no address) and where from.
        var peer = (stream as System.Net.Sockets.NetworkStream)?.Socket.RemoteEndPoint;
        var client = $"#{Interlocked.Increment(ref _connections)} ({(peer is IPEndPoint ? peer.ToString() : "unix")})";
        NbdServerLog.ClientConnected(Logger, client);
        var connection = new NbdConnection(stream, this, client);
        try
        {
            await using (connection.ConfigureAwait(false))
            {
                await connection.RunAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            // A bug, not a client's mistake (those end the connection inside RunAsync): the connection is
            // gone, the server carries on, and tests see it here.
            UnexpectedErrors.Enqueue(ex);
        }
    }

    /// <summary>Failures no connection should have had; fuzz tests assert there are none.</summary>
    internal ConcurrentQueue<Exception> UnexpectedErrors { get; } = new();

    /// <summary>
    /// Exports <paramref name="node"/> (<c>block-export-add type=nbd</c>). The export becomes a root parent of
    /// the node; a writable export needs a writable node.
    /// </summary>
    public NbdExport AddExport(BlockNode node, NbdExportOptions options)
    {
        var name = options.Name ?? node.Name;
        if (name.Length > NbdConnection.MaxStringLength)
        {
            throw new BlockOpenException($"export name is longer than {NbdConnection.MaxStringLength} bytes");
        }

        if (options.Writable && node.ReadOnly)
        {
            throw new BlockOpenException($"Cannot export node '{node.Name}' writable: the node is read-only", Block.Io.BlockErrno.EPERM);
        }

        foreach (var bitmap in options.Bitmaps ?? [])
        {
            if (bitmap.Name is null || bitmap.Busy || bitmap.Inconsistent)
            {
                throw new ArgumentException(bitmap.Name is null ? "Only named bitmaps can be exported"
                    : $"Bitmap '{bitmap.Name}' is {(bitmap.Busy ? "currently in use by another operation" : "inconsistent")} and cannot be used");
            }
        }

        var export = new NbdExport(options, name);
        if (_exports.Values.Any(e => e.Id == options.Id))
        {
            throw new ArgumentException($"Block export id '{options.Id}' is already in use");
        }

        if (!_exports.TryAdd(name, export))
        {
            throw new ArgumentException($"NBD server already has an export named '{name}'");
        }

        // QEMU's block exports: read, and write when writable; anything else may go on beside them except a
        // resize, since a client was told the size (QEMU's nbd_export_create; block_resize is refused). QEMU
        // attaches sharing everything and takes the resize back after, so a user that does not share what the
        // export takes is reported as such first.
        var takes = BlockPermissions.ConsistentRead | (options.Writable ? BlockPermissions.Write : BlockPermissions.None);
        var shares = (takes & ~BlockGraph.CumulativePermissions(node).Shares) != 0 ? BlockPermissions.All : BlockPermissions.All & ~BlockPermissions.Resize;
        try
        {
            export.Edge = _graph.AttachRoot(node, export, "export", takes, shares);
        }
        catch (BlockGraphException)
        {
            // A job that allows no other user of the node (a mirror's target, a commit's base) refuses it.
            _exports.TryRemove(name, out _);
            throw;
        }

        // Busy while exported, as QEMU marks them: the bitmaps' commands refuse to change or remove what clients read.
        foreach (var bitmap in export.Bitmaps)
        {
            bitmap.Busy = true;
        }

        NbdServerLog.ExportAdded(Logger, export.Id, name, node.Name, options.Writable ? "writable" : "read-only");
        return export;
    }

    /// <summary>The export with this NBD name, or null.</summary>
    internal NbdExport? FindExport(string name) => _exports.TryGetValue(name, out var export) ? export : null;

    /// <summary>The export with this id, or null.</summary>
    public NbdExport? GetExport(string id) => _exports.Values.FirstOrDefault(e => e.Id == id);

    /// <summary>
    /// Removes an export so new clients cannot find it, and detaches it from its node. Connections already
    /// using it keep their edge until they end (QEMU's <c>mode: safe</c> refuses while clients exist; the
    /// caller checks <see cref="NbdExport.Clients"/> for that).
    /// </summary>
    public async ValueTask RemoveExportAsync(NbdExport export)
    {
        if (_exports.TryRemove(new KeyValuePair<string, NbdExport>(export.Name, export)))
        {
            await _graph.DetachRootAsync(export.Edge).ConfigureAwait(false);
            foreach (var bitmap in export.Bitmaps)
            {
                bitmap.Busy = false;
            }

            NbdServerLog.ExportRemoved(Logger, export.Id);
        }
    }

    /// <summary>Clients connected to <paramref name="export"/> right now.</summary>
    public static int ClientCount(NbdExport export) => Volatile.Read(ref export.Clients);

    /// <summary>Stops listening and closes every connection, after their requests in progress have replied.</summary>
    public async ValueTask StopAsync()
    {
        if (_listener is { } listener)
        {
            await listener.StopAsync().ConfigureAwait(false);
            _listener = null;
            NbdServerLog.ServerStopped(Logger, listener.LocalEndPoint);
            // Its connections' reads are over: the pipes they left idle need not keep their descriptors.
            SplicePipe.CloseIdle();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        foreach (var export in _exports.Values.ToList())
        {
            await RemoveExportAsync(export).ConfigureAwait(false);
        }
    }
}
