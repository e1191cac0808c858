using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The limits qemu-storage-daemon 7.2 (Debian's, with the fix for CVE-2024-7409) puts on NBD clients when none is
/// asked for, on it and on <c>blockmirror serve</c> side by side: 100 clients served at once (<c>--nbd-server</c>
/// and <c>nbd-server-start</c> without <c>max-connections</c>), and 10 s for a client to finish its handshake.
/// </summary>
public sealed class NbdClientLimitDifferentialTests
{
    [SkippableFact]
    public async Task Without_max_connections_both_daemons_serve_100_clients_at_once()
    {
        using var root = new TempDirectory("bm-nbd-limit-");
        var results = await Task.WhenAll(new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() }.Select(async daemon =>
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemon.Name)).FullName;
            await File.WriteAllBytesAsync(Path.Combine(dir, "disk.raw"), new byte[1 << 20]);
            var seen = new List<string>();
            await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=n0,filename={dir}/disk.raw"], "n0", async (qmp, _) =>
            {
                seen.Add($"{daemon.Name} --nbd-server: {await NbdGreetings.CountAsync($"{dir}/nbd.sock", 100)}");

                await qmp.ExecuteAsync("nbd-server-stop");
                await qmp.ExecuteAsync("nbd-server-start", new JsonObject
                {
                    ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = $"{dir}/qmp-started.sock" } },
                });
                await qmp.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "e", ["node-name"] = "n0", ["name"] = "disk" });
                seen.Add($"{daemon.Name} nbd-server-start: {await NbdGreetings.CountAsync($"{dir}/qmp-started.sock", 100)}");
            });
            return seen;
        }));

        Assert.Equal(
            "qsd --nbd-server: greeted at once: 100, then after one left: 1\n" +
            "qsd nbd-server-start: greeted at once: 100, then after one left: 1\n" +
            "ours --nbd-server: greeted at once: 100, then after one left: 1\n" +
            "ours nbd-server-start: greeted at once: 100, then after one left: 1",
            string.Join('\n', results.SelectMany(r => r)));
    }

    [SkippableFact]
    public async Task A_client_silent_in_the_handshake_is_dropped_after_10_s_and_a_negotiated_one_is_not()
    {
        using var root = new TempDirectory("bm-nbd-handshake-limit-");
        var results = await Task.WhenAll(new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() }.Select(async daemon =>
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemon.Name)).FullName;
            await File.WriteAllBytesAsync(Path.Combine(dir, "disk.raw"), Enumerable.Repeat((byte)0x5a, 1 << 20).ToArray());
            var seen = "";
            await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=n0,filename={dir}/disk.raw"], "n0", async (_, _) =>
            {
                using var silent = await ConnectAsync($"{dir}/nbd.sock");
                using var negotiated = await ConnectAsync($"{dir}/nbd.sock");
                var connected = Stopwatch.StartNew();
                await ReadExactlyAsync(silent, 18);
                await ReadExactlyAsync(negotiated, 18);
                await NegotiateAsync(negotiated);

                // The silent client hears nothing more until the server closes it.
                var closed = await silent.ReceiveAsync(new byte[1]).WaitAsync(TimeSpan.FromSeconds(60));
                var after = connected.Elapsed;
                var dropped = closed == 0 && after >= TimeSpan.FromSeconds(9) && after < TimeSpan.FromSeconds(20)
                    ? "dropped after about 10 s"
                    : $"ended after {after.TotalSeconds:0.0} s with {closed} bytes";
                seen = $"{daemon.Name}: silent client {dropped}; negotiated client reads {await ReadFirstByteAsync(negotiated):x2}";
            });
            return seen;
        }));

        Assert.Equal(
            "qsd: silent client dropped after about 10 s; negotiated client reads 5a\n" +
            "ours: silent client dropped after about 10 s; negotiated client reads 5a",
            string.Join('\n', results));
    }

    static async Task<Socket> ConnectAsync(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
        return socket;
    }

    static async Task<byte[]> ReadExactlyAsync(Socket socket, int length)
    {
        var buffer = new byte[length];
        for (var read = 0; read < length;)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(read));
            Assert.True(n > 0, $"the server closed the connection after {read} of {length} bytes");
            read += n;
        }

        return buffer;
    }

    /// <summary>Fixed newstyle with NO_ZEROES, then NBD_OPT_EXPORT_NAME "disk": the client is in transmission.</summary>
    static async Task NegotiateAsync(Socket socket)
    {
        var request = new byte[4 + 16 + 4];
        BinaryPrimitives.WriteUInt32BigEndian(request, 3);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(4), NbdMagic.Option);
        BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(12), 1); // NBD_OPT_EXPORT_NAME
        BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(16), 4);
        "disk"u8.CopyTo(request.AsSpan(20));
        await socket.SendAsync(request);
        var reply = await ReadExactlyAsync(socket, 10);
        Assert.Equal(1UL << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
    }

    /// <summary>NBD_CMD_READ of the first 512 bytes; the first byte of the data of its simple reply.</summary>
    static async Task<byte> ReadFirstByteAsync(Socket socket)
    {
        var request = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(request, NbdMagic.Request);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(8), 7);
        BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(24), 512);
        await socket.SendAsync(request);
        var reply = await ReadExactlyAsync(socket, 16 + 512);
        Assert.Equal(NbdMagic.SimpleReply, BinaryPrimitives.ReadUInt32BigEndian(reply));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)));
        return reply[16];
    }
}
