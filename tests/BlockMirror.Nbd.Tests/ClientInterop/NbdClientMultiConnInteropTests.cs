using System.Text.RegularExpressions;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests.ClientInterop;

/// <summary>
/// <c>multi-conn</c> against the real servers: several connections where the server advertises
/// NBD_FLAG_CAN_MULTI_CONN, the requests spread over them, one flush covering all; one connection where it
/// does not.
/// </summary>
public sealed partial class NbdClientMultiConnInteropTests
{
    const long Size = 8 << 20;
    const int Piece = 256 << 10;

    [SkippableTheory]
    [MemberData(nameof(NbdTestServer.Kinds), MemberType = typeof(NbdTestServer))]
    public async Task Where_the_server_allows_it_four_connections_carry_the_writes_and_one_flush_covers_them(string kind)
    {
        await using var server = await NbdTestServer.StartAsync(kind, Size);
        var model = await WriteEverywhereAsync(server, expectedConnections: 4);
        await server.AssertHoldsAsync(model);
    }

    [SkippableFact]
    public async Task A_server_without_the_flag_gets_one_connection()
    {
        await using var server = await NbdTestServer.StartAsync("nbdkit-memory --filter=multi-conn multi-conn-mode=disable", Size);
        var model = await WriteEverywhereAsync(server, expectedConnections: 1);
        await server.AssertHoldsAsync(model);
    }

    [SkippableFact]
    public async Task The_requests_reach_the_server_on_every_connection()
    {
        using var logs = new TempDirectory("blockmirror-multi-conn-");
        var log = logs.File("nbdkit.log");
        await using var server = await NbdTestServer.StartAsync($"nbdkit-memory --filter=log logfile={log}", Size);
        var model = await WriteEverywhereAsync(server, expectedConnections: 4);
        await server.AssertHoldsAsync(model);

        // nbdkit's log names the connection of every request: the writes went out on all four.
        var writers = WriteLine().Matches(await File.ReadAllTextAsync(log)).Select(m => m.Groups[1].Value).Distinct().Count();
        Assert.True(writers >= 4, $"writes came on {writers} connection(s), not 4");
    }

    /// <summary>Opens the client with multi-conn=4, writes the export through in pieces all at once, flushes once; returns what it holds.</summary>
    static async Task<byte[]> WriteEverywhereAsync(NbdTestServer server, int expectedConnections)
    {
        var model = new byte[Size];
        await using var graph = new BlockGraph();
        var node = await server.OpenAsync(graph, multiConn: 4);
        var driver = (NbdClientDriver)node.Driver;
        Assert.Equal(expectedConnections, driver.Sessions.Count);
        Assert.Equal(expectedConnections == 4, driver.Export.Has(NbdTransmissionFlags.CanMultiConn));

        var writes = new List<Task>();
        for (var offset = 0; offset < Size; offset += Piece)
        {
            model.AsSpan(offset, Piece).Fill((byte)(offset / Piece + 1));
            writes.Add(node.WriteAsync(offset, model.AsMemory(offset, Piece)).AsTask());
        }

        await Task.WhenAll(writes);
        await node.FlushAsync();

        // Reads spread over the connections too, and see what every connection wrote.
        var back = new byte[Size];
        await Task.WhenAll(Enumerable.Range(0, (int)(Size / Piece)).Select(i => node.ReadAsync((long)i * Piece, back.AsMemory(i * Piece, Piece)).AsTask()));
        Assert.True(model.AsSpan().SequenceEqual(back), "what the connections read back differs from what they wrote");
        return model;
    }

    [GeneratedRegex(@"connection=(\d+) Write ")]
    private static partial Regex WriteLine();
}
