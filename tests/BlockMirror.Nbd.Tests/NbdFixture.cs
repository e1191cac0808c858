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

    /// <summary>Starts a server exporting a new raw image of <paramref name="size"/> bytes (zeroes) or the bytes given; with <paramref name="tls"/>, clients must start TLS.</summary>
    public static async Task<NbdFixture> StartAsync(long size, bool writable = true, byte[]? content = null, BlockMirror.Net.Tls.TlsCredentials? tls = null)
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
        var server = new NbdServer(graph);
        server.Start(new IPEndPoint(IPAddress.Loopback, 0), tls: tls);
        server.AddExport(node, new NbdExportOptions("exp0", ExportName, writable, "a test disk"));
        return new NbdFixture(directory, graph, server, node, path);
    }

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        await Graph.DisposeAsync();
        Directory.Dispose();
    }
}
