using System.Collections.Concurrent;
using System.Net;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Nbd.Server;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary><c>writethrough=on</c> on an export: every write and write-zeroes reaches the node with FUA.</summary>
public sealed class NbdWritethroughTests
{
    const long Size = 1 << 20;

    /// <summary>A pass-through filter that records the flags of every data-changing request.</summary>
    sealed class FlagRecorder(NodeEdge child) : FilterDriver(child)
    {
        public ConcurrentQueue<(BlockOperation Operation, RequestFlags Flags)> Calls { get; } = new();

        public override string DriverName => "test-flag-recorder";

        // Takes FUA itself (and passes it on), so that the node hands the flag down instead of flushing after.
        public override DriverCapabilities Capabilities => base.Capabilities with { CanFua = true };

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
        {
            Calls.Enqueue((BlockOperation.Write, flags));
            return base.WriteAsync(offset, buffer, flags, cancellationToken);
        }

        public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
        {
            Calls.Enqueue((BlockOperation.WriteZeroes, flags));
            return base.WriteZeroesAsync(offset, length, flags, cancellationToken);
        }

        public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
        {
            Calls.Enqueue((BlockOperation.Discard, RequestFlags.None));
            return base.DiscardAsync(offset, length, cancellationToken);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Writethrough_makes_every_write_fua(bool writethrough)
    {
        using var dir = new TempDirectory("blockmirror-nbd-test-");
        var path = dir.File("disk.raw");
        await using (var stream = new FileStream(path, FileMode.CreateNew))
        {
            stream.SetLength(Size);
        }

        await using var graph = new BlockGraph();
        var disk = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "raw", NodeName: "disk"));
        var top = await graph.CreateNodeAsync("rec", false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new FlagRecorder(node.AttachChild(ChildNames.File, disk))));
        var recorder = (FlagRecorder)top.Driver;
        await using var server = new NbdServer(graph);
        server.Start(new IPEndPoint(IPAddress.Loopback, 0));
        server.AddExport(top, new NbdExportOptions("exp0", "disk", Writable: true, Writethrough: writethrough));

        var port = ((IPEndPoint)server.LocalEndPoint!).Port;
        await using var client = await NbdClientDriver.ConnectAsync(
            new NbdClientOptions(new NbdServerAddress { Host = "127.0.0.1", Port = $"{port}" }, "disk"), CancellationToken.None);
        Assert.Equal(NbdError.None, (await client.RequestAsync(NbdCommand.Write, NbdCommandFlags.None, 0, 4096, default, new byte[4096], CancellationToken.None)).Error);
        Assert.Equal(NbdError.None, (await client.RequestAsync(NbdCommand.WriteZeroes, NbdCommandFlags.None, 4096, 4096, default, default, CancellationToken.None)).Error);
        Assert.Equal(NbdError.None, (await client.RequestAsync(NbdCommand.Write, NbdCommandFlags.Fua, 8192, 512, default, new byte[512], CancellationToken.None)).Error);

        var fua = recorder.Calls.Select(c => (c.Operation, (c.Flags & RequestFlags.Fua) != 0)).ToArray();
        Assert.Equal([(BlockOperation.Write, writethrough), (BlockOperation.WriteZeroes, writethrough), (BlockOperation.Write, true)], fua);
    }
}
