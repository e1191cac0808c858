using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests.Client;

/// <summary>
/// Our client against a server that breaks the protocol, by mistake or on purpose. During the handshake the
/// open fails with a message that says what was wrong; during transmission the request fails with EIO and the
/// connection is dead for every later request. Never a crash, never a hang (each case is bounded by a guard
/// far above its real time), never an allocation sized by the server.
/// </summary>
public sealed class NbdClientHostileServerTests : IDisposable
{
    /// <summary>Far above what any case takes; only a hang reaches it.</summary>
    static readonly TimeSpan Guard = TimeSpan.FromSeconds(20);

    readonly TempDirectory _dir = new("blockmirror-nbd-hostile-");

    public void Dispose() => _dir.Dispose();

    /// <summary>Opens our client on a server running <paramref name="script"/>; returns why the open failed.</summary>
    async Task<string> OpenFailureAsync(Func<FakeNbdSession, Task> script)
    {
        await using var server = new FakeNbdServer(_dir.File($"{Guid.NewGuid():N}.sock"), script);
        await using var graph = new BlockGraph();
        var refused = await Assert.ThrowsAsync<BlockOpenException>(async () => await OpenAsync(graph, server).AsTask().WaitAsync(Guard));
        Assert.Null(graph.FindNode("nbd0"));
        Assert.Empty(server.ScriptErrors);
        return refused.Message;
    }

    /// <summary>
    /// Opens a writable node. The scripts leave the close's flush unanswered: a short close grace keeps that from
    /// costing each case the default 10 s (NbdClientSilentServerTests covers the close itself).
    /// </summary>
    static ValueTask<BlockNode> OpenAsync(BlockGraph graph, FakeNbdServer server) =>
        NbdClientDriver.OpenAsync(graph, "nbd0", new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }) { CloseGrace = TimeSpan.FromMilliseconds(200) },
            readOnly: false, CancellationToken.None);

    public static TheoryData<string, string> HandshakeCases => new()
    {
        { "bad initial magic", "Invalid magic received" },
        { "bad option magic", "Bad server magic received" },
        { "oldstyle", "Server uses the oldstyle handshake, which has no export names; BlockMirror needs a newstyle server" },
        { "not fixed newstyle", "Server does not support the fixed newstyle handshake, which BlockMirror needs" },
        { "cut after the magic", "Failed to read server magic: Unexpected end-of-file before all data were read" },
        { "cut in an option reply", "failed to read option reply: Unexpected end-of-file before all data were read" },
        { "reply to another option", "Unexpected option type 7 expected 8" },
        { "bad option reply magic", "Unexpected option reply magic" },
        { "huge error message", "server's error message is too long" },
        { "huge info", "Unexpected reply type 3 of length 4294967295 to NBD_OPT_GO" },
        { "endless infos", "Server sent more than 64 replies to NBD_OPT_GO" },
        { "endless meta contexts", "Server replied with an unexpected meta context 'base:allocation'" },
        { "unasked meta context", "Server replied with an unexpected meta context 'qemu:dirty-bitmap:x'" },
        { "no export info", "server omitted export information" },
        { "short export info", "Server sent information of the wrong length (11 bytes) in reply to NBD_OPT_GO" },
        { "size over INT64_MAX", "export size 9223372036854775808 is too large" },
        { "minimum not a power of two", "server minimum block size 3 is not a power of two of at most 64 KiB" },
        { "minimum over 64 KiB", "server minimum block size 131072 is not a power of two of at most 64 KiB" },
        { "preferred under minimum", "server preferred block size 512 is not valid" },
        { "maximum under minimum", "server maximum block size 2048 is not valid" },
        { "size not a multiple of the minimum", "export size 1049088 is not a multiple of the minimum block size 4096" },
        { "no has-flags", "server did not set NBD_FLAG_HAS_FLAGS" },
        { "refused export", "Requested export not available" },
    };

    [Theory]
    [MemberData(nameof(HandshakeCases))]
    public async Task A_broken_handshake_fails_the_open_saying_what_was_wrong(string @case, string expected)
    {
        Func<FakeNbdSession, Task> script = @case switch
        {
            "bad initial magic" => s => s.GreetAsync(initMagic: 0x4e42444d41474943 ^ 1),
            "bad option magic" => s => s.GreetAsync(optionMagic: 0x1234),
            "oldstyle" => s => s.GreetAsync(optionMagic: 0x00420281861253),
            "not fixed newstyle" => s => s.GreetAsync(flags: NbdHandshakeFlags.NoZeroes),
            "cut after the magic" => s => s.WriteAsync(U64(NbdMagic.Init)),
            "cut in an option reply" => async s =>
            {
                await s.GreetAsync();
                await s.ReadClientFlagsAsync();
                await s.ReadOptionAsync();
                await s.WriteAsync(U64(NbdMagic.OptionReply), U32(8));
            },
            "reply to another option" => WithOption(NbdOption.StructuredReply, s => s.ReplyAsync(NbdOption.Go, NbdOptionReply.Ack)),
            "bad option reply magic" => WithOption(NbdOption.StructuredReply, s => s.WriteAsync(U64(0xdead), U32(8), U32(1), U32(0))),
            // The length says 4 GiB; the client must not allocate (or wait for) it.
            "huge error message" => AtGo(s => s.ReplyAsync(NbdOption.Go, NbdOptionReply.ErrUnknown, length: uint.MaxValue)),
            "huge info" => AtGo(s => s.ReplyAsync(NbdOption.Go, NbdOptionReply.Info, length: uint.MaxValue)),
            "endless infos" => AtGo(async s =>
            {
                while (true)
                {
                    await s.ReplyAsync(NbdOption.Go, NbdOptionReply.Info, [.. U16((ushort)NbdInfo.Name), .. "x"u8]);
                }
            }),
            "endless meta contexts" => WithOption(NbdOption.SetMetaContext, async s =>
            {
                while (true)
                {
                    await s.ReplyAsync(NbdOption.SetMetaContext, NbdOptionReply.MetaContext, [.. U32(1), .. "base:allocation"u8]);
                }
            }, answerStructured: true),
            "unasked meta context" => WithOption(NbdOption.SetMetaContext,
                s => s.ReplyAsync(NbdOption.SetMetaContext, NbdOptionReply.MetaContext, [.. U32(1), .. "qemu:dirty-bitmap:x"u8]), answerStructured: true),
            "no export info" => s => s.HandshakeAsync(1 << 20, FakeNbdSession.BlockSizeInfo(1, 4096, 1 << 20)),
            "short export info" => s => s.HandshakeAsync(1 << 20, FakeNbdSession.ExportInfo(1 << 20, FakeNbdSession.AllCommands)[..11]),
            "size over INT64_MAX" => s => s.HandshakeAsync(1 << 20, FakeNbdSession.ExportInfo(1UL << 63, FakeNbdSession.AllCommands)),
            "minimum not a power of two" => WithBlockSizes(3, 4096, 1 << 20),
            "minimum over 64 KiB" => WithBlockSizes(128 << 10, 128 << 10, 1 << 20),
            "preferred under minimum" => WithBlockSizes(4096, 512, 1 << 20),
            "maximum under minimum" => WithBlockSizes(4096, 4096, 2048),
            "size not a multiple of the minimum" => s => s.HandshakeAsync(1 << 20,
                FakeNbdSession.ExportInfo((1 << 20) + 512, FakeNbdSession.AllCommands), FakeNbdSession.BlockSizeInfo(4096, 4096, 1 << 20)),
            "no has-flags" => s => s.HandshakeAsync(1 << 20, FakeNbdSession.ExportInfo(1 << 20, NbdTransmissionFlags.SendFlush)),
            "refused export" => AtGo(s => s.ReplyAsync(NbdOption.Go, NbdOptionReply.ErrUnknown, "no such export"u8.ToArray())),
            _ => throw new ArgumentException(@case),
        };

        Assert.Equal(expected, await OpenFailureAsync(script));
    }

    /// <summary>Greets, answers options well until <paramref name="option"/>, then runs <paramref name="then"/>.</summary>
    static Func<FakeNbdSession, Task> WithOption(NbdOption option, Func<FakeNbdSession, Task> then, bool answerStructured = false) => async s =>
    {
        await s.GreetAsync();
        await s.ReadClientFlagsAsync();
        while (true)
        {
            var (asked, _) = await s.ReadOptionAsync();
            if (asked == option)
            {
                await then(s);
                return;
            }

            await s.ReplyAsync(asked, answerStructured && asked == NbdOption.StructuredReply ? NbdOptionReply.Ack : NbdOptionReply.ErrUnsupported);
        }
    };

    static Func<FakeNbdSession, Task> AtGo(Func<FakeNbdSession, Task> then) => WithOption(NbdOption.Go, then);

    static Func<FakeNbdSession, Task> WithBlockSizes(uint minimum, uint preferred, uint maximum) =>
        s => s.HandshakeAsync(1 << 20, FakeNbdSession.ExportInfo(1 << 20, FakeNbdSession.AllCommands), FakeNbdSession.BlockSizeInfo(minimum, preferred, maximum));

    [Fact]
    public async Task A_server_without_go_is_opened_with_export_name()
    {
        await using var server = new FakeNbdServer(_dir.File("old.sock"), async s =>
        {
            await s.GreetAsync(flags: NbdHandshakeFlags.FixedNewstyle);
            await s.ReadClientFlagsAsync();
            while (true)
            {
                var (option, data) = await s.ReadOptionAsync();
                if (option == NbdOption.ExportName)
                {
                    Assert.Equal("disk"u8.ToArray(), data);
                    // Size, flags and the 124 bytes of zeroes a client without NO_ZEROES gets.
                    await s.WriteAsync(U64(1 << 20), U16((ushort)(NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly)), new byte[124]);
                    await s.ReadRequestAsync();
                    return;
                }

                await s.ReplyAsync(option, NbdOptionReply.ErrUnsupported);
            }
        });
        await using var graph = new BlockGraph();

        var node = await NbdClientDriver.OpenAsync(graph, "nbd0", new NbdClientOptions(new NbdServerAddress { UnixPath = server.SocketPath }, "disk"), readOnly: true, CancellationToken.None)
            .AsTask().WaitAsync(Guard);

        var export = ((NbdClientDriver)node.Driver).Export;
        Assert.Equal((1UL << 20, false, (uint?)null, true), (export.Size, export.Structured, export.AllocationContext, export.ReadOnly));
    }

    public static TheoryData<string, string> TransmissionCases => new()
    {
        { "bad reply magic", "NBD server broke the protocol: reply magic 0x12345678 is neither a simple nor a structured reply" },
        { "unknown cookie", "NBD server broke the protocol: reply for cookie 0x77, which no request in flight has" },
        { "data chunk outside the read", "NBD server broke the protocol: a reply chunk at offset 8192 length 4096, outside the read at 0 length 4096" },
        { "hole chunk outside the read", "NBD server broke the protocol: a reply chunk at offset 18446744073709551615 length 4096, outside the read at 0 length 4096" },
        { "huge error chunk", "NBD server broke the protocol: an error chunk of 4294967295 bytes" },
        { "error message longer than its chunk", "NBD server broke the protocol: an error message of 65535 bytes in a chunk of 10" },
        { "unknown chunk type", "NBD server broke the protocol: unknown reply chunk type 99" },
        { "data for a write", "NBD server broke the protocol: a data chunk of 4104 bytes for a Write request" },
        { "simple data reply where structured were agreed", "NBD server broke the protocol: a simple reply with data to a read, where structured replies were agreed" },
        { "hang up mid-reply", "Connection closed by the NBD server" },
    };

    /// <summary>
    /// A good handshake, then the first request's reply is broken: that request fails with EIO, saying what the
    /// server did, and so does every later one (the stream is out of step and cannot be trusted again). A hang-up
    /// is tried again, and this server takes no second connection.
    /// </summary>
    [Theory]
    [MemberData(nameof(TransmissionCases))]
    public async Task A_broken_reply_fails_the_request_with_eio_and_the_connection_for_good(string @case, string expected)
    {
        var buffer = new byte[4096];
        var connections = 0;
        await using var server = new FakeNbdServer(_dir.File("t.sock"), async s =>
        {
            // After a hang-up the client connects again (QEMU's reconnect without reconnect-delay); the server is
            // gone for it, so the later request fails too, whichever of it and the reconnect comes first.
            if (Interlocked.Increment(ref connections) > 1)
            {
                return;
            }

            await s.HandshakeAsync();
            var request = await s.ReadRequestAsync();
            var cookie = request.Cookie;
            switch (@case)
            {
                case "bad reply magic":
                    await s.WriteAsync(U32(0x12345678), U32(0), U64(cookie));
                    break;
                case "unknown cookie":
                    await s.SimpleReplyAsync(0x77);
                    break;
                case "data chunk outside the read":
                    await s.ChunkAsync(cookie, NbdChunkType.OffsetData, [.. U64(8192), .. new byte[4096]]);
                    break;
                case "hole chunk outside the read":
                    await s.ChunkAsync(cookie, NbdChunkType.OffsetHole, [.. U64(ulong.MaxValue), .. U32(4096)]);
                    break;
                case "huge error chunk":
                    await s.ChunkAsync(cookie, NbdChunkType.Error, [.. U32((uint)NbdError.EIO), .. U16(0)], length: uint.MaxValue);
                    break;
                case "error message longer than its chunk":
                    await s.ChunkAsync(cookie, NbdChunkType.Error, [.. U32((uint)NbdError.EIO), .. U16(ushort.MaxValue), .. "abcd"u8]);
                    break;
                case "unknown chunk type":
                    await s.ChunkAsync(cookie, (NbdChunkType)99, []);
                    break;
                case "data for a write":
                    await s.ChunkAsync(cookie, NbdChunkType.OffsetData, [.. U64(0), .. new byte[4096]]);
                    break;
                case "simple data reply where structured were agreed":
                    await s.SimpleReplyAsync(cookie, data: new byte[4096]);
                    break;
                case "hang up mid-reply":
                    await s.ChunkAsync(cookie, NbdChunkType.OffsetData, [.. U64(0), .. new byte[100]], length: 4096 + 8);
                    return;
            }

            // Whatever else comes is not answered: the client must not wait for it.
            await s.ReadAsync(1 << 20);
        });
        await using var graph = new BlockGraph();
        var node = await OpenAsync(graph, server).AsTask().WaitAsync(Guard);

        var failed = await Assert.ThrowsAsync<BlockIOException>(() => (@case == "data for a write"
            ? node.WriteAsync(0, buffer).AsTask()
            : node.ReadAsync(0, buffer).AsTask()).WaitAsync(Guard));

        Assert.Equal(BlockErrno.EIO, failed.Errno);
        var later = await Assert.ThrowsAsync<BlockIOException>(() => node.ReadAsync(65536, buffer).AsTask().WaitAsync(Guard));
        Assert.Equal(BlockErrno.EIO, later.Errno);
        if (@case == "hang up mid-reply")
        {
            // An I/O failure, unlike a broken protocol, is worth another connection (QEMU's client tries again
            // without reconnect-delay too): each request fails with the loss, or with the words of the attempt this
            // server hung up on, whichever came first (the read in flight too: it may be failed after the attempt).
            foreach (var message in new[] { failed.Message, later.Message })
            {
                Assert.True(message.EndsWith(expected, StringComparison.Ordinal)
                    || message.EndsWith("Unexpected end-of-file before all data were read", StringComparison.Ordinal), message);
            }
        }
        else
        {
            Assert.EndsWith(expected, failed.Message, StringComparison.Ordinal);
            Assert.EndsWith(expected, later.Message, StringComparison.Ordinal);
        }

        Assert.Empty(server.ScriptErrors);
    }

    [Fact]
    public async Task An_error_reply_fails_only_its_request()
    {
        await using var server = new FakeNbdServer(_dir.File("e.sock"), async s =>
        {
            await s.HandshakeAsync();
            var first = await s.ReadRequestAsync();
            await s.ChunkAsync(first.Cookie, NbdChunkType.Error, [.. U32((uint)NbdError.ENOSPC), .. U16(9), .. "disk full"u8]);
            var second = await s.ReadRequestAsync();
            await s.ChunkAsync(second.Cookie, NbdChunkType.OffsetHole, [.. U64(second.Offset), .. U32(second.Length)]);
            await s.ReadAsync(1 << 20);
        });
        await using var graph = new BlockGraph();
        var node = await OpenAsync(graph, server).AsTask().WaitAsync(Guard);

        var failed = await Assert.ThrowsAsync<BlockIOException>(async () => await node.WriteAsync(0, new byte[512]).AsTask().WaitAsync(Guard));
        var read = Enumerable.Repeat((byte)1, 4096).ToArray();
        await node.ReadAsync(4096, read).AsTask().WaitAsync(Guard);

        Assert.Equal(BlockErrno.ENOSPC, failed.Errno);
        Assert.EndsWith("disk full", failed.Message, StringComparison.Ordinal);
        Assert.True(read.All(b => b == 0), "the hole was not read as zeroes");
        Assert.Empty(server.ScriptErrors);
    }
}
