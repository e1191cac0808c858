using System.Buffers.Binary;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Nbd.Server;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// What a misbehaving client gets: the protocol's error when the stream is still in step, a closed
/// connection when it is not; never a change to the image, and never an effect on other clients.
/// </summary>
public sealed class NbdBadInputTests
{
    const long Size = 1 << 20;

    static async Task AssertImageUntouchedAsync(NbdFixture nbd, byte[] expected) =>
        Assert.Equal(expected, await File.ReadAllBytesAsync(nbd.ImagePath));

    /// <summary>A second client can still read: the server kept serving.</summary>
    static async Task AssertServerStillServesAsync(NbdFixture nbd)
    {
        await using var other = await RawNbdClient.ConnectAsync(nbd.Port);
        await other.GoAsync(NbdFixture.ExportName);
        await other.SendRequestAsync(NbdCommand.Read, 0, 512, cookie: 99);
        var (error, cookie) = await other.ReadSimpleReplyAsync();
        Assert.Equal((NbdError.None, 99UL), (error, cookie));
        await other.ReadAsync(512);
    }

    [Fact]
    public async Task A_write_to_a_read_only_export_gets_eperm_and_the_connection_goes_on()
    {
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        var (_, flags) = await client.GoAsync(NbdFixture.ExportName);
        Assert.True(flags.HasFlag(NbdTransmissionFlags.ReadOnly));

        await client.SendRequestAsync(NbdCommand.Write, 0, 4096, cookie: 1, payload: Enumerable.Repeat((byte)7, 4096).ToArray());
        await client.SendRequestAsync(NbdCommand.WriteZeroes, 0, 4096, cookie: 2);
        await client.SendRequestAsync(NbdCommand.Trim, 0, 4096, cookie: 3);
        var replies = new[] { await client.ReadSimpleReplyAsync(), await client.ReadSimpleReplyAsync(), await client.ReadSimpleReplyAsync() };

        Assert.All(replies, r => Assert.Equal(NbdError.EPERM, r.Error));
        Assert.Equal([1UL, 2UL, 3UL], replies.Select(r => r.Cookie).Order());
        await client.SendRequestAsync(NbdCommand.Read, 0, 4096, cookie: 4);
        Assert.Equal((NbdError.None, 4UL), await client.ReadSimpleReplyAsync());
        await client.ReadAsync(4096);
        await AssertImageUntouchedAsync(nbd, new byte[Size]);
    }

    /// <summary>The NBD spec's errno, also QEMU's and nbdkit's: ENOSPC where data would not fit, EINVAL otherwise.</summary>
    [Theory]
    [InlineData(NbdCommand.Read, Size - 512, 1024u, NbdError.EINVAL)]
    [InlineData(NbdCommand.Write, Size, 512u, NbdError.ENOSPC)]
    [InlineData(NbdCommand.Write, Size - 1, 2u, NbdError.ENOSPC)]
    [InlineData(NbdCommand.Write, ulong.MaxValue - 100, 512u, NbdError.ENOSPC)]
    [InlineData(NbdCommand.WriteZeroes, 0, (uint)Size + 1, NbdError.ENOSPC)]
    [InlineData(NbdCommand.Trim, Size + 4096, 4096u, NbdError.EINVAL)]
    [InlineData(NbdCommand.Cache, Size, 1u, NbdError.EINVAL)]
    public async Task A_request_past_the_end_gets_the_spec_errno_and_is_not_executed(NbdCommand command, ulong offset, uint length, NbdError expected)
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        var payload = command == NbdCommand.Write ? Enumerable.Repeat((byte)0xee, (int)length).ToArray() : null;
        await client.SendRequestAsync(command, offset, length, cookie: 5, payload: payload);

        Assert.Equal((expected, 5UL), await client.ReadSimpleReplyAsync());
        await AssertImageUntouchedAsync(nbd, new byte[Size]);
        // The payload of the refused write was consumed: the next request is read in step.
        await client.SendRequestAsync(NbdCommand.Flush, 0, 0, cookie: 6);
        Assert.Equal((NbdError.None, 6UL), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task An_unknown_command_or_flag_gets_einval()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync((NbdCommand)42, 0, 512, cookie: 1);
        Assert.Equal((NbdError.EINVAL, 1UL), await client.ReadSimpleReplyAsync());
        await client.SendRequestAsync(NbdCommand.Flush, 0, 0, cookie: 2, flags: NbdCommandFlags.FastZero);
        Assert.Equal((NbdError.EINVAL, 2UL), await client.ReadSimpleReplyAsync());
        await client.SendRequestAsync(NbdCommand.BlockStatus, 0, 512, cookie: 3);
        Assert.Equal((NbdError.EINVAL, 3UL), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task A_bad_request_magic_closes_only_that_connection()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync(NbdCommand.Write, 0, 512, payload: new byte[512], magic: 0xdeadbeef);

        Assert.True(await client.IsClosedByServerAsync());
        await AssertServerStillServesAsync(nbd);
        await AssertImageUntouchedAsync(nbd, new byte[Size]);
    }

    [Fact]
    public async Task A_write_larger_than_the_payload_limit_gets_einval_then_the_connection_closes_without_writing()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync(NbdCommand.Write, 0, NbdTransmission.MaxPayload + 1u, cookie: 7, payload: new byte[4096]);

        // An answer first (never silence), then the close: the payload that follows cannot be trusted.
        Assert.Equal((NbdError.EINVAL, 7UL), await client.ReadSimpleReplyAsync());
        Assert.True(await client.IsClosedByServerAsync());
        await AssertServerStillServesAsync(nbd);
        await AssertImageUntouchedAsync(nbd, new byte[Size]);
    }

    [Fact]
    public async Task A_client_that_disconnects_in_the_middle_of_a_write_changes_nothing()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync(NbdCommand.Write, 0, 65536, payload: Enumerable.Repeat((byte)1, 1000).ToArray());
        client.Abort();
        await client.DisposeAsync();

        await AssertServerStillServesAsync(nbd);
        await AssertImageUntouchedAsync(nbd, new byte[Size]);
    }

    [Fact]
    public async Task An_option_haggle_that_never_ends_is_cut_off()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);

        var answered = 0;
        for (var i = 0; i < NbdConnection.MaxOptions + 10; i++)
        {
            try
            {
                await client.SendOptionAsync((NbdOption)1000, []);
                var (_, reply, _) = await client.ReadOptionReplyAsync();
                Assert.Equal(NbdOptionReply.ErrUnsupported, reply);
                answered++;
            }
            catch (Exception ex) when (ex is IOException or EndOfStreamException)
            {
                break;
            }
        }

        Assert.Equal(NbdConnection.MaxOptions, answered);
        await AssertServerStillServesAsync(nbd);
    }

    [Fact]
    public async Task An_oversized_option_gets_too_big_and_a_bad_option_magic_closes()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using (var client = await RawNbdClient.ConnectAsync(nbd.Port))
        {
            // A header that announces 100 MiB of data, and no data.
            await client.WriteAsync(RawNbdClient.Option(NbdOption.Go, [])[..12]);
            await client.WriteAsync(U32(100 << 20));
            var (_, reply, _) = await client.ReadOptionReplyAsync();
            Assert.Equal(NbdOptionReply.ErrTooBig, reply);
            Assert.True(await client.IsClosedByServerAsync());
        }

        await using (var client = await RawNbdClient.ConnectAsync(nbd.Port))
        {
            await client.SendOptionAsync(NbdOption.List, [], magic: 0x1234);
            Assert.True(await client.IsClosedByServerAsync());
        }

        await AssertServerStillServesAsync(nbd);
    }

    [Fact]
    public async Task Go_for_an_unknown_export_gets_err_unknown_and_the_handshake_goes_on()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        var name = "nope"u8.ToArray();

        await client.SendOptionAsync(NbdOption.Go, [.. U32((uint)name.Length), .. name, .. U16(0)]);
        var (_, reply, message) = await client.ReadOptionReplyAsync();

        Assert.Equal(NbdOptionReply.ErrUnknown, reply);
        Assert.Contains("nope", System.Text.Encoding.UTF8.GetString(message), StringComparison.Ordinal);
        var (size, _) = await client.GoAsync(NbdFixture.ExportName);
        Assert.Equal((ulong)Size, size);
    }

    [Fact]
    public async Task Many_requests_in_flight_are_all_answered_with_their_cookies()
    {
        var content = new byte[Size];
        new Random(3).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: true, content);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured: true);

        const int Requests = 64;
        for (var i = 0; i < Requests; i++)
        {
            await client.SendRequestAsync(NbdCommand.Read, (ulong)(i * 16384), 16384, cookie: (ulong)(1000 + i));
        }

        var seen = new HashSet<ulong>();
        for (var i = 0; i < Requests; i++)
        {
            var (flags, type, cookie, payload) = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkFlags.Done, NbdChunkType.OffsetData), (flags, type));
            var index = (int)(cookie - 1000);
            Assert.Equal((ulong)(index * 16384), BinaryPrimitives.ReadUInt64BigEndian(payload));
            Assert.Equal(content.AsSpan(index * 16384, 16384).ToArray(), payload[8..]);
            Assert.True(seen.Add(cookie));
        }
    }

    [Fact]
    public async Task Block_status_reports_data_and_zero_holes()
    {
        var content = new byte[64 << 10];
        Array.Fill(content, (byte)9);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: true, content);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured: true);

        await client.SendRequestAsync(NbdCommand.BlockStatus, 0, (uint)Size, cookie: 8);
        var (flags, type, cookie, payload) = await client.ReadChunkAsync();

        Assert.Equal((NbdChunkFlags.Done, NbdChunkType.BlockStatus, 8UL), (flags, type, cookie));
        Assert.Equal(NbdMetaContexts.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(payload));
        var extents = Enumerable.Range(0, (payload.Length - 4) / 8)
            .Select(i => (Length: BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(4 + 8 * i)), State: (NbdAllocationState)BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(8 + 8 * i))))
            .ToList();
        Assert.Equal((64u << 10, NbdAllocationState.None), extents[0]);
        Assert.Equal((uint)Size, (uint)extents.Sum(e => e.Length));
        Assert.All(extents.Skip(1), e => Assert.Equal(NbdAllocationState.Hole | NbdAllocationState.Zero, e.State));
    }
}
