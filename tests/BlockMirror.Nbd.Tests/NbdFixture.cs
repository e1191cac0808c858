using System.Net;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Server;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>A raw image file exported by an <see cref="NbdServer"/> on a loopback port.</summary>
sealed class NbdFixture : IAsyncDisposable
{
    public const string ExportName = "disk";

    NbdFixture(TempDirectory directory, BlockGraph graph, NbdServer server, BlockNode node, string path)
    {
        Directory = directory;
        Graph = graph;
        Server = server;
        Node = node;
        ImagePath = path;
    }

    public TempDirectory Directory { get; }

    public BlockGraph Graph { get; }

    public NbdServer Server { get; }

    public BlockNode Node { get; }

    public string ImagePath { get; }

    public int Port => ((IPEndPoint)Server.LocalEndPoint!).Port;

    public string Uri => $"nbd://127.0.0.1:{Port}/{ExportName}";

    /// <summary>
    /// Starts a server exporting a new raw image of <paramref name="size"/> bytes (zeroes) or the bytes given; with
    /// <paramref name="tls"/>, clients must start TLS; with <paramref name="log"/>, the server logs there.
    /// </summary>
    public static async Task<NbdFixture> StartAsync(long size, bool writable = true, byte[]? content = null, BlockMirror.Net.Tls.TlsCredentials? tls = null,
        Microsoft.Extensions.Logging.ILoggerFactory? log = null)
    {
        var directory = new TempDirectory("blockmirror-nbd-test-");
        var path = directory.File("disk.raw");
        await using (var stream = new FileStream(path, FileMode.CreateNew))
        {
            stream.SetLength(size);
            if (content is not null)
            {
                await stream.WriteAsync(content);
            }
        }

        var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "raw", ReadOnly: !writable, NodeName: "disk"));
        var server = new NbdServer(graph, log);
        server.Start(new IPEndPoint(IPAddress.Loopback, 0), tls: tls);
        server.AddExport(node, new NbdExportOptions("exp0", ExportName, writable, "a test disk"));
        return new NbdFixture(directory, graph, server, node, path);
    }

    /// <summary>With <see cref="StartX509Async"/>: the directory of the server's certificates and a client's (QEMU's layout).</summary>
    public TempDirectory? Pki { get; private init; }

    /// <summary>A server whose clients must start TLS, with x509 certificates made for it (<see cref="TlsCertificates"/>).</summary>
    public static async Task<NbdFixture> StartX509Async(long size, bool verifyPeer = true)
    {
        var pki = new TempDirectory("blockmirror-nbd-tls-");
        TlsCertificates.CreateX509(pki.Path);
        var credentials = BlockMirror.Net.Tls.X509Credentials.Load("tls0", BlockMirror.Net.Tls.TlsEndpoint.Server, pki.Path, verifyPeer, sanityCheck: true);
        var fixture = await StartAsync(size, tls: credentials);
        return new NbdFixture(fixture.Directory, fixture.Graph, fixture.Server, fixture.Node, fixture.ImagePath) { Pki = pki };
    }

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        await Graph.DisposeAsync();
        Directory.Dispose();
        Pki?.Dispose();
    }
}
