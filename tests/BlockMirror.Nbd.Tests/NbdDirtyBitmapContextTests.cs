using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Nbd.Server;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// The <c>qemu:dirty-bitmap:NAME</c> meta contexts of an export with bitmaps, on the wire: what a listing and a
/// choice answer (QEMU's query rules and context ids), and what block status replies (one chunk per chosen
/// context, the bitmap's runs, REQ_ONE, a reply's bound); and what a client that gets the option wrong is told.
/// </summary>
public sealed class NbdDirtyBitmapContextTests
{
    /// <summary>Not a whole number of chunks, so the last chunk runs past the end of the export.</summary>
    const long Size = (1 << 20) + 512;

    const long Granularity = 64 << 10;

    const string Export = "bm";

    /// <summary>
    /// The fixture's node exported again as <see cref="Export"/> with two bitmaps: b0 dirty at [64 KiB, 192 KiB) and
    /// in the last chunk, b1 dirty at [0, 64 KiB).
    /// </summary>
    static async Task<(NbdFixture Nbd, DirtyBitmap B0, DirtyBitmap B1)> StartAsync()
    {
        var nbd = await NbdFixture.StartAsync(Size);
        var b0 = nbd.Node.CreateDirtyBitmap(Granularity, "b0");
        var b1 = nbd.Node.CreateDirtyBitmap(Granularity, "b1");
        b0.SetDirty(64 << 10, 128 << 10);
        b0.SetDirty(Size - 1, 1);
        b1.SetDirty(0, 1);
        b0.Enabled = b1.Enabled = false;
        nbd.Server.AddExport(nbd.Node, new NbdExportOptions("bm0", Export, Bitmaps: [b0, b1]));
        return (nbd, b0, b1);
    }

    /// <summary>An option's data for NBD_OPT_LIST/SET_META_CONTEXT: the export name, the query count, the queries.</summary>
    static byte[] MetaQuery(string export, params string[] queries) =>
    [
        .. Name(export), .. U32((uint)queries.Length), .. queries.SelectMany(Name),
    ];

    static byte[] Name(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        return [.. U32((uint)bytes.Length), .. bytes];
    }

    static async Task StructuredAsync(RawNbdClient client)
    {
        await client.SendOptionAsync(NbdOption.StructuredReply, []);
        Assert.Equal(NbdOptionReply.Ack, (await client.ReadOptionReplyAsync()).Reply);
    }

    /// <summary>Sends a meta context option and reads its replies: each context with its id, then the final reply (ack or error) and its text.</summary>
    static async Task<(List<(uint Id, string Name)> Contexts, NbdOptionReply End, string Message)> MetaAsync(RawNbdClient client, NbdOption option, byte[] data)
    {
        await client.SendOptionAsync(option, data);
        var contexts = new List<(uint, string)>();
        while (true)
        {
            var (replied, reply, payload) = await client.ReadOptionReplyAsync();
            Assert.Equal(option, replied);
            if (reply != NbdOptionReply.MetaContext)
            {
                return (contexts, reply, Encoding.UTF8.GetString(payload));
            }

            contexts.Add((BinaryPrimitives.ReadUInt32BigEndian(payload), Encoding.UTF8.GetString(payload.AsSpan(4))));
        }
    }

    static async Task<List<string>> ListAsync(RawNbdClient client, params string[] queries)
    {
        var (contexts, end, _) = await MetaAsync(client, NbdOption.ListMetaContext, MetaQuery(Export, queries));
        Assert.Equal(NbdOptionReply.Ack, end);
        Assert.All(contexts, c => Assert.Equal(0u, c.Id));
        return [.. contexts.Select(c => c.Name)];
    }

    /// <summary>Connects with structured replies, chooses <paramref name="queries"/> on the export and opens it.</summary>
    static async Task<(RawNbdClient Client, List<(uint Id, string Name)> Chosen)> OpenAsync(NbdFixture nbd, params string[] queries)
    {
        var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await StructuredAsync(client);
        var (chosen, end, _) = await MetaAsync(client, NbdOption.SetMetaContext, MetaQuery(Export, queries));
        Assert.Equal(NbdOptionReply.Ack, end);
        await client.GoAsync(Export);
        return (client, chosen);
    }

    /// <summary>One block status request on a new export (<see cref="StartAsync"/>) with <paramref name="queries"/> chosen; its chunks.</summary>
    static async Task<List<(uint Context, List<(uint Length, uint Flags)> Extents)>> StatusOnceAsync(string[] queries, ulong offset, uint length, NbdCommandFlags flags = 0)
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        var (client, _) = await OpenAsync(nbd, queries);
        await using var __ = client;
        await client.SendRequestAsync(NbdCommand.BlockStatus, offset, length, cookie: 5, flags: flags);
        return await ReadStatusAsync(client, 5);
    }

    /// <summary>Connects with structured replies and chooses <paramref name="queries"/> on the export (acknowledged); the export is not opened yet.</summary>
    static async Task<RawNbdClient> ChosenAsync(NbdFixture nbd, params string[] queries)
    {
        var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await StructuredAsync(client);
        Assert.Equal(NbdOptionReply.Ack, (await MetaAsync(client, NbdOption.SetMetaContext, MetaQuery(Export, queries))).End);
        return client;
    }

    /// <summary>Fails unless a block status request is refused as QEMU refuses one with no context chosen.</summary>
    static async Task AssertNotNegotiatedAsync(RawNbdClient client)
    {
        await client.SendRequestAsync(NbdCommand.BlockStatus, 0, 512, cookie: 9);
        Assert.Equal((NbdError.EINVAL, "CMD_BLOCK_STATUS not negotiated"), await ReadErrorChunkAsync(client, 9));
    }

    /// <summary>Reads the chunks of one block status reply up to the one flagged done: per chunk its context id and extents.</summary>
    static async Task<List<(uint Context, List<(uint Length, uint Flags)> Extents)>> ReadStatusAsync(RawNbdClient client, ulong cookie)
    {
        var chunks = new List<(uint, List<(uint, uint)>)>();
        while (true)
        {
            var (flags, type, replied, payload) = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkType.BlockStatus, cookie), (type, replied));
            var extents = Enumerable.Range(0, (payload.Length - 4) / 8)
                .Select(i => (BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(4 + 8 * i)), BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(8 + 8 * i))))
                .ToList();
            chunks.Add((BinaryPrimitives.ReadUInt32BigEndian(payload), extents));
            if (flags.HasFlag(NbdChunkFlags.Done))
            {
                return chunks;
            }
        }
    }

    /// <summary>A chunk as "context: length/flags, ...", for comparing.</summary>
    static string Describe((uint Context, List<(uint Length, uint Flags)> Extents) chunk) =>
        $"{chunk.Context}: {string.Join(", ", chunk.Extents.Select(e => $"{e.Length}/{e.Flags}"))}";

    static async Task<(NbdError Error, string Message)> ReadErrorChunkAsync(RawNbdClient client, ulong cookie)
    {
        var (flags, type, replied, payload) = await client.ReadChunkAsync();
        Assert.Equal((NbdChunkFlags.Done, NbdChunkType.Error, cookie), (flags, type, replied));
        var length = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(4));
        return ((NbdError)BinaryPrimitives.ReadUInt32BigEndian(payload), Encoding.UTF8.GetString(payload, 6, length));
    }

    [Fact]
    public async Task A_listing_names_the_contexts_its_queries_ask_for_as_qemu_reads_them()
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        // No structured replies: QEMU lists without them (only a choice needs them).
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);

        string[] all = ["base:allocation", "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"];
        Assert.Equal(all, await ListAsync(client));
        Assert.Equal(["qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"], await ListAsync(client, "qemu:"));
        Assert.Equal(["qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"], await ListAsync(client, "qemu:dirty-bitmap:"));
        Assert.Equal(["base:allocation"], await ListAsync(client, "base:"));
        Assert.Equal(["qemu:dirty-bitmap:b1"], await ListAsync(client, "qemu:dirty-bitmap:b1"));
        // Names the export does not have answer nothing, and no error: a bitmap of another export, a prefix of a
        // name, another namespace, the allocation depth this export does not serve.
        Assert.Empty(await ListAsync(client, "qemu:dirty-bitmap:b", "qemu:dirty-bitmap:b00", "nbdkit:", "qemu:allocation-depth", "base:allocation:x"));
        // The export without bitmaps has only base:allocation.
        var (contexts, end, _) = await MetaAsync(client, NbdOption.ListMetaContext, MetaQuery(NbdFixture.ExportName));
        Assert.Equal(NbdOptionReply.Ack, end);
        Assert.Equal(["base:allocation"], contexts.Select(c => c.Name));
    }

    [Fact]
    public async Task A_choice_takes_exact_names_only_with_qemu_s_context_ids()
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await StructuredAsync(client);

        var (chosen, end, _) = await MetaAsync(client, NbdOption.SetMetaContext, MetaQuery(Export, "qemu:dirty-bitmap:b1", "qemu:", "base:", "qemu:dirty-bitmap:", "base:allocation"));

        // In QEMU's order whatever the queries' order: base:allocation is 0, the export's i-th bitmap 2 + i.
        Assert.Equal(NbdOptionReply.Ack, end);
        Assert.Equal([(0u, "base:allocation"), (3u, "qemu:dirty-bitmap:b1")], chosen);
    }

    [Fact]
    public async Task Block_status_answers_one_chunk_per_chosen_context_with_the_bitmap_s_runs()
    {
        var chunks = await StatusOnceAsync(["qemu:dirty-bitmap:b0", "base:allocation", "qemu:dirty-bitmap:b1"], 0, (uint)Size);

        Assert.Equal([0u, 2u, 3u], chunks.Select(c => c.Context));
        Assert.Equal([((uint)Size, 3u)], chunks[0].Extents);
        // The last chunk is partial: its dirty extent ends at the export's end.
        Assert.Equal([(64u << 10, 0u), (128u << 10, 1u), ((1u << 20) - (192u << 10), 0u), (512u, 1u)], chunks[1].Extents);
        Assert.Equal([(64u << 10, 1u), ((uint)Size - (64u << 10), 0u)], chunks[2].Extents);
    }

    [Fact]
    public async Task Req_one_answers_one_extent_per_context_as_long_as_its_state_lasts()
    {
        // From inside b0's dirty run, unaligned: the run is reported from the offset to its end.
        var chunks = await StatusOnceAsync(["base:allocation", "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"], 100_000, (uint)(Size - 100_000), NbdCommandFlags.RequestOne);

        Assert.Equal([$"0: {Size - 100_000}/3", $"2: {(192 << 10) - 100_000}/1", $"3: {Size - 100_000}/0"], chunks.Select(Describe));
    }

    [Fact]
    public async Task Block_status_within_a_chunk_and_past_the_end()
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        var (client, _) = await OpenAsync(nbd, "qemu:dirty-bitmap:b0");
        await using var __ = client;

        // Inside one dirty chunk, a few bytes: the range asked, no more.
        await client.SendRequestAsync(NbdCommand.BlockStatus, 70_000, 10, cookie: 1);
        Assert.Equal(["2: 10/1"], (await ReadStatusAsync(client, 1)).Select(Describe));
        // The partial last chunk alone.
        await client.SendRequestAsync(NbdCommand.BlockStatus, (ulong)Size - 512, 512, cookie: 2);
        Assert.Equal([(512u, 1u)], (await ReadStatusAsync(client, 2)).Single().Extents);
        // A range that runs past the end of the export: EINVAL, and the connection goes on.
        await client.SendRequestAsync(NbdCommand.BlockStatus, (ulong)Size - 512, 1024, cookie: 3);
        Assert.Equal(NbdError.EINVAL, (await ReadErrorChunkAsync(client, 3)).Error);
        await client.SendRequestAsync(NbdCommand.BlockStatus, 0, 0, cookie: 4);
        Assert.Equal((NbdError.EINVAL, "need non-zero length"), await ReadErrorChunkAsync(client, 4));
        await client.SendRequestAsync(NbdCommand.BlockStatus, 0, 512, cookie: 5);
        Assert.Equal([(512u, 0u)], (await ReadStatusAsync(client, 5)).Single().Extents);
    }

    [Fact]
    public async Task A_bitmap_of_more_runs_than_a_reply_holds_is_read_in_several_requests()
    {
        await using var nbd = await NbdFixture.StartAsync(8 << 20);
        var bitmap = nbd.Node.CreateDirtyBitmap(512, "many");
        // Every other 512-byte chunk dirty: 16384 runs, more than one reply may carry.
        for (long offset = 0; offset < 8 << 20; offset += 1024)
        {
            bitmap.SetDirty(offset, 512);
        }

        nbd.Server.AddExport(nbd.Node, new NbdExportOptions("bm0", Export, Bitmaps: [bitmap]));
        var (client, _) = await OpenAsync(nbd, "qemu:dirty-bitmap:many");
        await using var _ = client;

        var runs = new List<(uint Length, uint Flags)>();
        ulong position = 0;
        var requests = 0;
        for (var cookie = 1ul; position < 8 << 20; cookie++, requests++)
        {
            await client.SendRequestAsync(NbdCommand.BlockStatus, position, (uint)((8 << 20) - position), cookie);
            var extents = (await ReadStatusAsync(client, cookie)).Single().Extents;
            Assert.InRange(extents.Count, 1, NbdTransmission.MaxExtents);
            runs.AddRange(extents);
            position += (ulong)extents.Sum(e => (long)e.Length);
        }

        Assert.Equal(8ul << 20, position);
        Assert.Equal(16384 / NbdTransmission.MaxExtents, requests);
        Assert.All(runs.Select((r, i) => (r, i)), x => Assert.Equal((512u, x.i % 2 == 0 ? 1u : 0u), x.r));
    }

    [Fact]
    public async Task Nothing_chosen_or_chosen_for_another_export_means_block_status_is_refused()
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;

        // Chosen on the export with bitmaps, then the other export opened: nothing is chosen there (QEMU's rule).
        await using var client = await ChosenAsync(nbd, "base:allocation");
        await client.GoAsync(NbdFixture.ExportName);
        await AssertNotNegotiatedAsync(client);

        // A choice of unknown contexts only chooses nothing.
        var (other, chosen) = await OpenAsync(nbd, "qemu:dirty-bitmap:nope", "qemu:");
        await using var __ = other;
        Assert.Empty(chosen);
        await AssertNotNegotiatedAsync(other);
    }

    [Fact]
    public async Task A_failed_choice_forgets_the_one_before()
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        await using var client = await ChosenAsync(nbd, "qemu:dirty-bitmap:b0");

        // Two queries announced, one sent.
        var (contexts, end, message) = await MetaAsync(client, NbdOption.SetMetaContext, [.. Name(Export), .. U32(2), .. Name("qemu:dirty-bitmap:b1")]);
        Assert.Equal((NbdOptionReply.ErrInvalid, "Inconsistent lengths in option"), (end, message));
        Assert.Empty(contexts);

        await client.GoAsync(Export);
        await AssertNotNegotiatedAsync(client);
    }

    public static TheoryData<string, byte[], NbdOptionReply, string> BadOptions => new()
    {
        { "no structured replies", MetaQuery(Export, "base:allocation"), NbdOptionReply.ErrInvalid, "request option 'NBD_OPT_SET_META_CONTEXT' when structured reply is not negotiated" },
        { "unknown export", MetaQuery("nope", "base:allocation"), NbdOptionReply.ErrUnknown, "export 'nope' not present" },
        { "embedded NUL", [.. Name(Export), .. U32(1), .. Name("qemu:dirty-bitmap:b0\0x")], NbdOptionReply.ErrInvalid, "Unexpected embedded NUL in option" },
        { "no query count", Name(Export), NbdOptionReply.ErrInvalid, "Inconsistent lengths in option: no query count" },
        { "a query longer than the data", [.. Name(Export), .. U32(1), .. U32(100), .. "base:allocation"u8], NbdOptionReply.ErrInvalid, "Inconsistent lengths in option" },
        { "a count the data cannot hold", [.. Name(Export), .. U32(uint.MaxValue), .. Name("base:allocation")], NbdOptionReply.ErrInvalid, "Inconsistent lengths in option" },
        { "bytes after the last query", [.. MetaQuery(Export, "base:allocation"), 0], NbdOptionReply.ErrInvalid, "Inconsistent lengths in option: 1 bytes after the last query" },
        { "a name over 4 KiB", MetaQuery(new string('x', 4097), "base:allocation"), NbdOptionReply.ErrInvalid, "Invalid name length: over 4096 bytes" },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public async Task A_bad_choice_gets_an_error_and_the_handshake_goes_on(string what, byte[] data, NbdOptionReply expected, string message)
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        if (what != "no structured replies")
        {
            await StructuredAsync(client);
        }

        var (contexts, end, said) = await MetaAsync(client, NbdOption.SetMetaContext, data);

        Assert.Equal((expected, message), (end, said));
        Assert.Empty(contexts);
        // Still in step: the next option is answered.
        Assert.Equal(["qemu:dirty-bitmap:b0"], await ListAsync(client, "qemu:dirty-bitmap:b0"));
    }

    [Fact]
    public async Task A_query_over_4_KiB_is_skipped_and_the_others_are_answered()
    {
        var (nbd, _, _) = await StartAsync();
        await using var _ = nbd;
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);

        Assert.Equal(["qemu:dirty-bitmap:b1"], await ListAsync(client, "qemu:dirty-bitmap:" + new string('b', 4096), "qemu:dirty-bitmap:b1"));
    }

    [Fact]
    public async Task Exported_bitmaps_are_busy_until_the_export_is_removed_and_a_busy_one_is_not_exported_twice()
    {
        var (nbd, b0, b1) = await StartAsync();
        await using var _ = nbd;
        Assert.True(b0.Busy && b1.Busy);

        var refused = Assert.Throws<ArgumentException>(() => nbd.Server.AddExport(nbd.Node, new NbdExportOptions("bm1", "again", Bitmaps: [b1])));
        Assert.Equal("Bitmap 'b1' is currently in use by another operation and cannot be used", refused.Message);
        Assert.Null(nbd.Server.GetExport("bm1"));

        await nbd.Server.RemoveExportAsync(nbd.Server.GetExport("bm0")!);
        Assert.False(b0.Busy || b1.Busy);
        nbd.Server.AddExport(nbd.Node, new NbdExportOptions("bm1", "again", Bitmaps: [b1]));
        Assert.True(b1.Busy);
    }

    [Fact]
    public async Task An_export_with_the_allocation_depth_lists_and_serves_it_between_base_allocation_and_the_bitmaps()
    {
        await using var nbd = await NbdFixture.StartAsync(Size, content: new byte[4096]);
        var bitmap = nbd.Node.CreateDirtyBitmap(Granularity, "b0");
        nbd.Server.AddExport(nbd.Node, new NbdExportOptions("bm0", Export, Bitmaps: [bitmap], AllocationDepth: true));
        await using (var lister = await RawNbdClient.ConnectAsync(nbd.Port))
        {
            Assert.Equal(["qemu:allocation-depth", "qemu:dirty-bitmap:b0"], await ListAsync(lister, "qemu:"));
            Assert.Equal(["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0"], await ListAsync(lister));
        }

        var (client, chosen) = await OpenAsync(nbd, "qemu:allocation-depth", "qemu:dirty-bitmap:b0");
        await using var _ = client;
        Assert.Equal([(1u, "qemu:allocation-depth"), (2u, "qemu:dirty-bitmap:b0")], chosen);

        await client.SendRequestAsync(NbdCommand.BlockStatus, 0, (uint)Size, cookie: 1);
        // A raw node over a file decides every byte itself: depth 1 throughout, holes included (as QEMU counts).
        Assert.Equal([$"1: {Size}/1", $"2: {Size}/0"], (await ReadStatusAsync(client, 1)).Select(Describe));
    }
}
