using System.Net;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Client;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests.ClientInterop;

/// <summary>
/// One NBD server for the client's interop tests, by name: qemu-nbd, qemu-storage-daemon and nbdkit (memory
/// and file plugins, with filters) as processes on a Unix socket, or our own server in this process on a
/// loopback port. Every one serves a zeroed export of the size asked for, named <c>disk</c>, writable, and
/// discarding (trimmed ranges read back as zeroes).
/// </summary>
sealed class NbdTestServer : IAsyncDisposable
{
    readonly IAsyncDisposable _server;
    readonly TempDirectory _directory;

    NbdTestServer(TempDirectory directory, IAsyncDisposable server, NbdServerAddress address, string uri, string? file)
    {
        _directory = directory;
        _server = server;
        Address = address;
        Uri = uri;
        ImagePath = file;
    }

    public NbdServerAddress Address { get; }

    /// <summary>Every kind of server <see cref="StartAsync"/> starts plainly, for the tests that run against each.</summary>
    public static TheoryData<string> Kinds => new() { "qemu-nbd", "qsd", "nbdkit-memory", "nbdkit-file", "ours" };

    /// <summary>The export as qemu-img and qemu-io name it.</summary>
    public string Uri { get; }

    /// <summary>The file the export stores its data in, or null for nbdkit's memory plugin.</summary>
    public string? ImagePath { get; }

    public TempDirectory Directory => _directory;

    /// <summary>
    /// Starts the server <paramref name="kind"/>: <c>qemu-nbd</c>, <c>qsd</c>, <c>nbdkit-file</c>, <c>ours</c>, or
    /// <c>nbdkit-memory</c> followed by nbdkit options, filters and their parameters, space-separated
    /// (<c>"nbdkit-memory --filter=log logfile=PATH"</c>).
    /// </summary>
    public static async Task<NbdTestServer> StartAsync(string kind, long size)
    {
        var directory = new TempDirectory("blockmirror-nbd-client-");
        try
        {
            var socket = directory.File("nbd.sock");
            var file = directory.File("disk.raw");
            if (!kind.StartsWith("nbdkit-memory", StringComparison.Ordinal))
            {
                await using var stream = new FileStream(file, FileMode.CreateNew);
                stream.SetLength(size);
            }

            var unix = new NbdServerAddress { UnixPath = socket };
            switch (kind.Split(' ')[0])
            {
                case "qemu-nbd":
                    return new(directory, await NbdServerProcess.QemuNbdAsync(socket, file, "--discard=unmap"), unix, UnixUri(socket), file);
                case "qsd":
                    return new(directory, await NbdServerProcess.QsdAsync(socket, file), unix, UnixUri(socket), file);
                case "nbdkit-file":
                    return new(directory, await NbdServerProcess.NbdkitAsync(socket, "file", file), unix, UnixUri(socket), file);
                case "nbdkit-memory":
                {
                    // nbdkit's own options and filters go before the plugin, the filters' parameters after it.
                    var extra = kind.Split(' ').Skip(1).ToLookup(a => a.StartsWith('-'));
                    return new(directory, await NbdServerProcess.NbdkitAsync(socket, [.. extra[true], "memory", $"{size}", .. extra[false]]), unix, UnixUri(socket), null);
                }
                case "ours":
                {
                    var fixture = await NbdFixture.StartAsync(size);
                    File.Delete(file);
                    var port = ((IPEndPoint)fixture.Server.LocalEndPoint!).Port;
                    return new(directory, fixture, new NbdServerAddress { Host = "127.0.0.1", Port = $"{port}" }, fixture.Uri, fixture.ImagePath);
                }

                default:
                    throw new ArgumentException($"unknown NBD server '{kind}'", nameof(kind));
            }
        }
        catch
        {
            directory.Dispose();
            throw;
        }
    }

    static string UnixUri(string socket) => $"nbd+unix:///{NbdServerProcess.ExportName}?socket={socket}";

    /// <summary>Opens our client on the export as node <c>nbd0</c> of <paramref name="graph"/>, asking for <paramref name="multiConn"/> connections.</summary>
    public ValueTask<BlockNode> OpenAsync(BlockGraph graph, bool readOnly = false, int multiConn = 1) =>
        NbdClientDriver.OpenAsync(graph, "nbd0", new NbdClientOptions(Address, NbdServerProcess.ExportName, MultiConn: multiConn), readOnly, CancellationToken.None);

    /// <summary>
    /// The export holds <paramref name="model"/>, as qemu-img reads it over NBD (qemu-img compare) and, for a
    /// file-backed export, as the file holds it. Call once the client under test has disconnected.
    /// </summary>
    public async Task AssertHoldsAsync(byte[] model)
    {
        var expected = _directory.File("model.raw");
        await File.WriteAllBytesAsync(expected, model);
        var compare = await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, Uri);
        Assert.Contains("Images are identical.", compare, StringComparison.Ordinal);
        if (ImagePath is { } file)
        {
            var stored = await File.ReadAllBytesAsync(file);
            Assert.True(model.AsSpan().SequenceEqual(stored), "the export's file differs from what was written");
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _server.DisposeAsync();
        _directory.Dispose();
    }
}
