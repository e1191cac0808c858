using System.Net.Sockets;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// Random and mutated client byte streams against a live server, bounded in count and time: every
/// connection must end (answered or closed), and afterwards the server still serves a well-behaved client.
/// </summary>
public sealed class NbdFuzzTests
{
    const long Size = 1 << 20;

    /// <summary>A well-formed session: flags, structured replies, GO, a few requests of every kind, disconnect.</summary>
    static byte[] ValidSession()
    {
        var name = "disk"u8.ToArray();
        var bytes = new List<byte>();
        bytes.AddRange(U32((uint)(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)));
        void Option(NbdOption option, byte[] data) => bytes.AddRange(RawNbdClient.Option(option, data));

        Option(NbdOption.StructuredReply, []);
        var query = "base:allocation"u8.ToArray();
        Option(NbdOption.SetMetaContext, [.. U32((uint)name.Length), .. name, .. U32(1), .. U32((uint)query.Length), .. query]);
        Option(NbdOption.Go, [.. U32((uint)name.Length), .. name, .. U16(0)]);
        void Request(NbdCommand command, ulong offset, uint length, byte[]? payload = null, NbdCommandFlags flags = 0) =>
            bytes.AddRange(RawNbdClient.Request(command, offset, length, cookie: 7, flags, payload));

        Request(NbdCommand.Write, 4096, 512, new byte[512]);
        Request(NbdCommand.Read, 0, 8192);
        Request(NbdCommand.WriteZeroes, 65536, 65536, flags: NbdCommandFlags.NoHole);
        Request(NbdCommand.Trim, 0, 4096);
        Request(NbdCommand.BlockStatus, 0, (uint)Size);
        Request(NbdCommand.Flush, 0, 0);
        Request(NbdCommand.Disconnect, 0, 0);
        return [.. bytes];
    }

    static byte[] Mutate(Random random, byte[] valid)
    {
        var bytes = valid.ToList();
        var edits = random.Next(1, 6);
        for (var i = 0; i < edits; i++)
        {
            var at = random.Next(bytes.Count);
            switch (random.Next(5))
            {
                case 0: bytes[at] = (byte)random.Next(256); break;
                case 1: bytes.RemoveRange(at, Math.Min(bytes.Count - at, random.Next(1, 16))); break;
                case 2: bytes.InsertRange(at, Enumerable.Range(0, random.Next(1, 16)).Select(_ => (byte)random.Next(256))); break;
                case 3: bytes[at] ^= (byte)(1 << random.Next(8)); break;
                default: bytes.RemoveRange(at, bytes.Count - at); break;
            }

            if (bytes.Count == 0)
            {
                bytes.Add(0);
            }
        }

        return [.. bytes];
    }

    [Fact]
    public async Task Mutated_and_random_sessions_neither_crash_nor_hang_the_server()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        var valid = ValidSession();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        foreach (var seed in Seeds.Range(ciDefault: 300).TakeWhile(_ => DateTime.UtcNow < deadline))
        {
            var random = new Random(seed);
            var input = seed % 10 == 9 ? Enumerable.Range(0, random.Next(1, 4096)).Select(_ => (byte)random.Next(256)).ToArray() : Mutate(random, valid);
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(System.Net.IPAddress.Loopback, nbd.Port);
            using var stream = new NetworkStream(socket);
            try
            {
                await stream.WriteAsync(input);
                // Read what comes for a moment, then hang up: the server must cope with either order.
                using var quiet = new CancellationTokenSource(TimeSpan.FromMilliseconds(20));
                var sink = new byte[65536];
                while (await stream.ReadAsync(sink, quiet.Token) > 0)
                {
                }
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or SocketException)
            {
            }
        }

        // Still serving: a well-behaved client gets through the handshake and a read.
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);
        await client.SendRequestAsync(NbdCommand.Read, 0, 512, cookie: 1);
        Assert.Equal((NbdError.None, 1UL), await client.ReadSimpleReplyAsync());
        Assert.Empty(nbd.Server.UnexpectedErrors);
    }
}
