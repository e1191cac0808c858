using System.Net.Sockets;
using BlockMirror.Qmp.Commands;
using BlockMirror.Qmp.Server;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>A <see cref="StorageDaemon"/> with a QMP monitor on a Unix socket in a temporary directory, for tests that talk to it as a client.</summary>
sealed class MonitorHarness : IAsyncDisposable
{
    readonly TempDirectory _dir;

    public MonitorHarness(string name)
    {
        _dir = new TempDirectory($"blockmirror-qmp-{name}-");
        Server = new QmpServer(Daemon.Commands, Daemon.Jobs.Events);
        SocketPath = _dir.File("qmp.sock");
        Server.Listen(new UnixDomainSocketEndPoint(SocketPath));
    }

    public StorageDaemon Daemon { get; } = new();

    public QmpServer Server { get; }

    public string SocketPath { get; }

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        await Daemon.DisposeAsync();
        _dir.Dispose();
    }
}
