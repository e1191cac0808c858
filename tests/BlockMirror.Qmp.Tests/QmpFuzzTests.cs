using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// Random and mutated monitor input, bounded in count and time: no crash, no hang, and afterwards a new
/// client still gets answers and the graph is as it was.
/// </summary>
public sealed class QmpFuzzTests
{
    static readonly string[] Corpus =
    [
        """{"execute": "qmp_capabilities"}""",
        """{"execute": "query-version", "id": 1}""",
        """{"execute": "query-block-jobs"}""",
        """{"execute": "query-named-block-nodes", "id": "x"}""",
        """{"execute": "blockdev-mirror", "arguments": {"device": "disk", "target": "nowhere", "sync": "full", "speed": 10}}""",
        """{"execute": "block-job-cancel", "arguments": {"device": "job0", "force": true}}""",
        """{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "f", "filename": "/nonexistent/image"}}""",
        """{"execute": "job-dismiss", "arguments": {"id": "j"}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "disk"}}""",
        """{"execute": "blockdev-del", "arguments": {"node-name": "nothing"}}""",
    ];

    /// <summary>The characters that change JSON's structure most.</summary>
    const string Specials = "{}[]\",:\\ 0a-";

    static byte[] Mutate(Random random)
    {
        var bytes = Encoding.UTF8.GetBytes(Corpus[random.Next(Corpus.Length)]).ToList();
        for (var i = random.Next(1, 5); i > 0; i--)
        {
            var at = random.Next(bytes.Count);
            switch (random.Next(5))
            {
                case 0: bytes[at] = (byte)random.Next(256); break;
                case 1: bytes.RemoveAt(at); break;
                case 2: bytes.Insert(at, (byte)Specials[random.Next(Specials.Length)]); break;
                case 3: bytes.InsertRange(at, bytes.GetRange(at, Math.Min(bytes.Count - at, random.Next(1, 40)))); break;
                default: bytes[at] ^= (byte)(1 << random.Next(8)); break;
            }

            if (bytes.Count == 0)
            {
                bytes.Add((byte)'{');
            }
        }

        bytes.Add((byte)'\n');
        return [.. bytes];
    }

    [Fact]
    public async Task Mutated_commands_neither_crash_nor_hang_the_monitor()
    {
        await using var monitor = new MonitorHarness("fuzz");
        var socket = monitor.SocketPath;
        await using (var setup = await QmpClient.ConnectAsync(socket))
        {
            await setup.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "disk", ["size"] = 1 << 20 });
        }

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        foreach (var seed in Seeds.Range(ciDefault: 300).TakeWhile(_ => DateTime.UtcNow < deadline))
        {
            var random = new Random(seed);
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await client.ConnectAsync(new UnixDomainSocketEndPoint(socket));
            using var stream = new NetworkStream(client);
            try
            {
                var input = new List<byte>();
                if (random.Next(2) == 0)
                {
                    input.AddRange(Encoding.UTF8.GetBytes(Corpus[0] + "\n"));
                }

                for (var i = random.Next(1, 4); i > 0; i--)
                {
                    input.AddRange(seed % 10 == 9 ? Enumerable.Range(0, random.Next(1, 2048)).Select(_ => (byte)random.Next(256)) : Mutate(random));
                }

                await stream.WriteAsync(input.ToArray());
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

        await using var after = await QmpClient.ConnectAsync(socket);
        Assert.NotNull(await after.ExecuteAsync("query-version"));
        var nodes = (await after.ExecuteAsync("query-named-block-nodes"))!.AsArray();
        Assert.Equal(["disk"], nodes.Select(n => (string?)n!["node-name"]));
    }
}
