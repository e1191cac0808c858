using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// Serves a private NBD export of a small raw file to a private client until the JIT has compiled the
/// request path for good, so that the first real client does not run on unoptimized code.
/// </summary>
/// <remarks>
/// <para>.NET compiles a method quickly and unoptimized on its first call, and again optimized on a
/// background thread once it has been called 30 times (right away: blockmirror's runtimeconfig sets
/// TieredCompilation.CallCountingDelayMs to 0). A daemon's first clients paid for both: measured with
/// nbdcopy right after start-up, the first 1 GiB write ran at 1.07 to 1.13 GiB/s, the following ones at
/// 1.36 to 1.53 GiB/s.</para>
/// <para>The client pipelines what nbdcopy and fio send (256 KiB reads and writes, 4 KiB writes, at depth
/// 16, then a flush) in rounds, until a round compiles at most <see cref="QuietRound"/> methods or
/// <see cref="MaxDuration"/> passes; on the 2-core machine of the benchmarks it runs to the limit (7 to 9
/// rounds, each compiling 50 to 300 methods). The first nbdcopy read and write after start-up then
/// measured 1283 to 1593 and 1327 to 1663 MiB/s, against 1119 to 1180 and 1296 to 1322 without it.</para>
/// <para>It runs before the daemon listens, on its own graph, socket and file, which are removed
/// afterwards. It only saves time: where it cannot run (no temporary directory, no Unix sockets) the
/// daemon starts without it.</para>
/// </remarks>
public static class NbdWarmup
{
    /// <summary>Start-up time the warm-up may take at most.</summary>
    public static readonly TimeSpan MaxDuration = TimeSpan.FromSeconds(1);

    /// <summary>Methods compiled during a round that still count as a quiet round.</summary>
    const int QuietRound = 10;

    const long Size = 4 << 20;
    const int Depth = 16;
    const int Large = 256 << 10;
    const int Small = 4096;

    public static Task RunAsync(CancellationToken cancellationToken = default) => RunAsync(Path.GetTempPath(), cancellationToken);

    /// <summary>The warm-up with its files in a new directory below <paramref name="temporaryRoot"/> (tests give their own).</summary>
    internal static async Task RunAsync(string temporaryRoot, CancellationToken cancellationToken)
    {
        DirectoryInfo directory;
        try
        {
            // Private to this user, as Directory.CreateTempSubdirectory makes it: its socket serves a node.
            var path = Path.Combine(temporaryRoot, $"blockmirror-warmup-{Guid.NewGuid():N}");
            directory = OperatingSystem.IsWindows()
                ? Directory.CreateDirectory(path)
                : Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return;
        }

        try
        {
            var path = Path.Combine(directory.FullName, "warmup.raw");
            using (var file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite))
            {
                RandomAccess.SetLength(file, Size);
            }

            var graph = new BlockGraph();
            await using var _ = graph.ConfigureAwait(false);
            var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "raw", NodeName: "warmup"), cancellationToken).ConfigureAwait(false);
            var server = new NbdServer(graph);
            await using var __ = server.ConfigureAwait(false);
            var socketPath = Path.Combine(directory.FullName, "nbd.sock");
            server.Start(new UnixDomainSocketEndPoint(socketPath));
            server.AddExport(node, new NbdExportOptions("warmup", "warmup", Writable: true, Description: null));

            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken).ConfigureAwait(false);
            var stream = new NetworkStream(socket, ownsSocket: false);
            await using var ___ = stream.ConfigureAwait(false);
            await HandshakeAsync(stream, cancellationToken).ConfigureAwait(false);

            var clock = Stopwatch.StartNew();
            for (var round = 0; clock.Elapsed < MaxDuration; round++)
            {
                var before = JitInfo.GetCompiledMethodCount();
                await RoundAsync(stream, round, cancellationToken).ConfigureAwait(false);

                // Give the background compiler a moment, then stop once a round brought (almost) nothing new
                // to compile: a few methods a round keep coming from elsewhere in the process.
                await Task.Delay(50, cancellationToken).ConfigureAwait(false);
                if (round > 0 && JitInfo.GetCompiledMethodCount() - before <= QuietRound)
                {
                    break;
                }
            }

            await SendAsync(stream, NbdCommand.Disconnect, 0, 0, 0, null, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or UnauthorizedAccessException or InvalidOperationException or BlockOpenException)
        {
            // The daemon starts all the same, only its first clients run on code still being compiled.
        }
        finally
        {
            try
            {
                directory.Delete(recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }
    }

    /// <summary>Fixed newstyle, structured replies, NBD_OPT_GO for the export "warmup".</summary>
    static async Task HandshakeAsync(NetworkStream stream, CancellationToken cancellationToken)
    {
        var greeting = new byte[18];
        await stream.ReadExactlyAsync(greeting, cancellationToken).ConfigureAwait(false);
        var writer = new ArrayBufferWriter<byte>();
        NbdWire.WriteUInt32(writer, (uint)(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes));
        WriteOption(writer, NbdOption.StructuredReply, []);
        WriteOption(writer, NbdOption.Go, [0, 0, 0, 6, .. "warmup"u8, 0, 0]);
        await stream.WriteAsync(writer.WrittenMemory, cancellationToken).ConfigureAwait(false);

        var header = new byte[NbdWire.OptionReplyHeaderSize];
        var acks = 0;
        while (acks < 2)
        {
            await stream.ReadExactlyAsync(header, cancellationToken).ConfigureAwait(false);
            var reply = (NbdOptionReply)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            await stream.ReadExactlyAsync(new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16))], cancellationToken).ConfigureAwait(false);
            if (reply == NbdOptionReply.Ack)
            {
                acks++;
            }
            else if (reply != NbdOptionReply.Info)
            {
                throw new InvalidOperationException($"NBD warm-up: option refused ({reply})");
            }
        }

        static void WriteOption(ArrayBufferWriter<byte> writer, NbdOption option, ReadOnlySpan<byte> data)
        {
            NbdWire.WriteUInt64(writer, NbdMagic.Option);
            NbdWire.WriteUInt32(writer, (uint)option);
            NbdWire.WriteUInt32(writer, (uint)data.Length);
            writer.Write(data);
        }
    }

    /// <summary>One round: 32 large writes, 32 large reads, 256 small writes at scattered offsets, a flush.</summary>
    static async Task RoundAsync(NetworkStream stream, int round, CancellationToken cancellationToken)
    {
        var payload = new byte[Large];
        var requests = new List<(NbdCommand Command, long Offset, int Length)>();
        for (var i = 0; i < 32; i++)
        {
            requests.Add((NbdCommand.Write, i * (long)Large % Size, Large));
        }

        for (var i = 0; i < 32; i++)
        {
            requests.Add((NbdCommand.Read, i * (long)Large % Size, Large));
        }

        for (var i = 0; i < 256; i++)
        {
            requests.Add((NbdCommand.Write, (i * 7919L + round) % (Size / Small) * Small, Small));
        }

        // Keep Depth requests in flight: a new one for every reply.
        var sent = 0;
        for (; sent < Math.Min(Depth, requests.Count); sent++)
        {
            await SendAsync(stream, requests[sent].Command, sent, requests[sent].Offset, requests[sent].Length, payload, cancellationToken).ConfigureAwait(false);
        }

        for (var answered = 0; answered < requests.Count; answered++)
        {
            await ReadReplyAsync(stream, payload, cancellationToken).ConfigureAwait(false);
            if (sent < requests.Count)
            {
                await SendAsync(stream, requests[sent].Command, sent, requests[sent].Offset, requests[sent].Length, payload, cancellationToken).ConfigureAwait(false);
                sent++;
            }
        }

        await SendAsync(stream, NbdCommand.Flush, 0, 0, 0, null, cancellationToken).ConfigureAwait(false);
        await ReadReplyAsync(stream, payload, cancellationToken).ConfigureAwait(false);
    }

    static async Task SendAsync(NetworkStream stream, NbdCommand command, long cookie, long offset, int length, byte[]? payload, CancellationToken cancellationToken)
    {
        var header = new byte[NbdWire.RequestSize];
        var writer = new ArrayBufferWriter<byte>(NbdWire.RequestSize);
        NbdWire.WriteRequest(writer, new NbdRequest(NbdCommandFlags.None, command, (ulong)cookie, (ulong)offset, (uint)length));
        writer.WrittenSpan.CopyTo(header);
        await stream.WriteAsync(header, cancellationToken).ConfigureAwait(false);
        if (command == NbdCommand.Write)
        {
            await stream.WriteAsync(payload.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>A simple reply (writes, flush) or a structured read reply, whose data lands in <paramref name="scratch"/>.</summary>
    static async Task ReadReplyAsync(NetworkStream stream, byte[] scratch, CancellationToken cancellationToken)
    {
        var header = new byte[NbdWire.ChunkHeaderSize];
        await stream.ReadExactlyAsync(header.AsMemory(0, NbdWire.SimpleReplySize), cancellationToken).ConfigureAwait(false);
        var magic = BinaryPrimitives.ReadUInt32BigEndian(header);
        if (magic == NbdMagic.SimpleReply)
        {
            if (BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4)) != 0)
            {
                throw new InvalidOperationException("NBD warm-up: a request failed");
            }

            return;
        }

        await stream.ReadExactlyAsync(header.AsMemory(NbdWire.SimpleReplySize), cancellationToken).ConfigureAwait(false);
        var type = (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
        var length = (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        if (magic != NbdMagic.StructuredReply || type != NbdChunkType.OffsetData || length > scratch.Length + 8)
        {
            throw new InvalidOperationException($"NBD warm-up: unexpected reply (magic 0x{magic:x8}, type {type})");
        }

        await stream.ReadExactlyAsync(scratch.AsMemory(0, 8), cancellationToken).ConfigureAwait(false);
        await stream.ReadExactlyAsync(scratch.AsMemory(0, length - 8), cancellationToken).ConfigureAwait(false);
    }
}
