using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Client;
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
/// <para>The client (BlockMirror's own NBD client) pipelines what nbdcopy and fio send (256 KiB reads and writes, 4 KiB writes, at depth
/// 16, then a flush) in rounds, until a round compiles at most <see cref="QuietRound"/> methods or
/// <see cref="MaxDuration"/> passes; on the 2-core machine of the benchmarks it runs to the limit (7 to 9
/// rounds, each compiling 50 to 300 methods). The first nbdcopy read and write after start-up then
/// measured 1283 to 1593 and 1327 to 1663 MiB/s, against 1119 to 1180 and 1296 to 1322 without it.</para>
/// <para>It runs before the daemon listens, on its own graph, socket and file, which are removed
/// afterwards. It only saves time: where it cannot run (no temporary directory, no Unix sockets, a file size
/// limit under its 4 MiB) the daemon starts without it.</para>
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

            var client = await NbdClientDriver.ConnectAsync(new NbdClientOptions(new NbdServerAddress { UnixPath = socketPath }, "warmup"), cancellationToken)
                .ConfigureAwait(false);

            // Disposing sends NBD_CMD_DISC once every request has its answer.
            await using var ___ = client.ConfigureAwait(false);
            var buffers = new byte[Depth][];
            for (var i = 0; i < Depth; i++)
            {
                buffers[i] = new byte[Large];
            }

            var clock = Stopwatch.StartNew();
            for (var round = 0; clock.Elapsed < MaxDuration; round++)
            {
                var before = JitInfo.GetCompiledMethodCount();
                await RoundAsync(client, buffers, round, cancellationToken).ConfigureAwait(false);

                // Give the background compiler a moment, then stop once a round brought (almost) nothing new
                // to compile: a few methods a round keep coming from elsewhere in the process.
                await Task.Delay(50, cancellationToken).ConfigureAwait(false);
                if (round > 0 && JitInfo.GetCompiledMethodCount() - before <= QuietRound)
                {
                    break;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or UnauthorizedAccessException or InvalidOperationException or BlockOpenException
                                       or ArgumentOutOfRangeException)
        {
            // The daemon starts all the same, only its first clients run on code still being compiled. (.NET reports
            // EFBIG, a file size over the file system's or the process's limit, as ArgumentOutOfRangeException.)
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

    /// <summary>
    /// One round: 32 large writes, 32 large reads, 256 small writes at scattered offsets, <see cref="Depth"/> in
    /// flight at a time (each of the <see cref="Depth"/> senders with its own buffer), then a flush.
    /// </summary>
    static async Task RoundAsync(NbdClientConnection client, byte[][] buffers, int round, CancellationToken cancellationToken)
    {
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

        var next = -1;
        var senders = new Task[Depth];
        for (var i = 0; i < Depth; i++)
        {
            var buffer = buffers[i];
            senders[i] = Task.Run(async () =>
            {
                for (var index = Interlocked.Increment(ref next); index < requests.Count; index = Interlocked.Increment(ref next))
                {
                    var (command, offset, length) = requests[index];
                    await SendAsync(client, command, offset, command == NbdCommand.Read ? buffer.AsMemory(0, length) : default,
                        command == NbdCommand.Write ? buffer.AsMemory(0, length) : default, length, cancellationToken).ConfigureAwait(false);
                }
            }, cancellationToken);
        }

        await Task.WhenAll(senders).ConfigureAwait(false);
        await SendAsync(client, NbdCommand.Flush, 0, default, default, 0, cancellationToken).ConfigureAwait(false);
    }

    static async Task SendAsync(NbdClientConnection client, NbdCommand command, long offset, Memory<byte> read, ReadOnlyMemory<byte> write, int length,
        CancellationToken cancellationToken)
    {
        var reply = await client.RequestAsync(command, NbdCommandFlags.None, offset, length, read, write, cancellationToken).ConfigureAwait(false);
        if (reply.Error != NbdError.None)
        {
            throw new InvalidOperationException($"NBD warm-up: {command} failed with {reply.Error}");
        }
    }
}
