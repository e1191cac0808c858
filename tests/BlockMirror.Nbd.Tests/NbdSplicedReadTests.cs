using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Nbd.Server;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// Reads that go from the exported file to the socket through a pipe (Linux splice): every size and alignment
/// gives the file's bytes, simple and structured, sparse or not; a read with more data runs than the pipe has
/// slots for finishes through a buffer; a client that reads late makes the sender wait for room; a client that
/// goes away mid-reply leaves the server serving.
/// </summary>
[Collection(nameof(NbdSplicedReadTests))]
public sealed class NbdSplicedReadTests
{
    const int Size = 8 << 20;

    const int SplicePipeLimit = BlockMirror.Block.Io.SplicePipe.MaxCapacity;

    /// <summary>Up to the largest read a pipe takes (1 MiB less two pages of slack), and one past it.</summary>
    static readonly int[] Lengths = [1, 511, 4095, 4096, 4097, 65536, 300_001, (1 << 20) - 8192, 1 << 20];

    [Theory]
    [InlineData(false, NbdCommandFlags.None)]
    [InlineData(true, NbdCommandFlags.None)]
    [InlineData(true, NbdCommandFlags.DontFragment)]
    public async Task Reads_of_every_size_and_alignment_give_the_files_bytes(bool structured, NbdCommandFlags flags)
    {
        var content = new byte[Size];
        new Random(11).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured);
        var random = new Random(12);
        var reads = Lengths.SelectMany(length => new[] { 0, 1, 4096, random.Next(1, 8192) }.Select(skew => (Length: length, Offset: random.Next(0, (Size - length) / 8192) * 8192 + skew)))
            .Where(r => r.Offset + r.Length <= Size)
            .Select((r, i) => (Cookie: (ulong)i, r.Offset, r.Length))
            .ToDictionary(r => r.Cookie);
        var before = Interlocked.Read(ref NbdTransmission.SplicedReads);

        foreach (var read in reads.Values)
        {
            await client.SendRequestAsync(NbdCommand.Read, (ulong)read.Offset, (uint)read.Length, read.Cookie, flags);
            var (cookie, data) = await client.ReadReadReplyAsync(structured, c => ((ulong)reads[c].Offset, reads[c].Length));
            Assert.Equal(read.Cookie, cookie);
            Assert.True(content.AsSpan(read.Offset, read.Length).SequenceEqual(data), $"read at {read.Offset} (+{read.Length}) differs");
        }

        // Every read under the pipe's limit went through one (other tests may add to the count meanwhile).
        var spliceable = reads.Values.Count(r => r.Length < (1 << 20) - 8192 || (r.Length == (1 << 20) - 8192 && r.Offset % 4096 == 0));
        Assert.True(Interlocked.Read(ref NbdTransmission.SplicedReads) - before >= spliceable, $"fewer than {spliceable} reads were spliced");
    }

    /// <summary>
    /// A sparse read goes through a pipe when all its data runs fit, and through a buffer when they do not (data runs
    /// between holes each take whole pipe slots): both give the file's bytes. Lowers the pipes' limit, a static, so
    /// the class runs alone.
    /// </summary>
    [Theory]
    [InlineData(SplicePipeLimit, true)]
    [InlineData(64 << 10, false)]
    public async Task A_sparse_read_goes_through_a_pipe_only_when_its_data_runs_fit(int limit, bool spliced)
    {
        var saved = NbdTransmission.PipeLimit;
        NbdTransmission.PipeLimit = limit;
        try
        {
            var content = new byte[Size];
            new Random(21).NextBytes(content);
            await using var nbd = await NbdFixture.StartAsync(Size, writable: true, content);
            await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
            await client.GoAsync(NbdFixture.ExportName, structured: true);

            // Holes in every other 4 KiB block of the first 256 KiB: a read there is a run of data, a run of hole, ...
            for (var block = 0; block < 64; block += 2)
            {
                await client.SendRequestAsync(NbdCommand.Trim, (ulong)block * 4096, 4096, cookie: 1);
                Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
                content.AsSpan(block * 4096, 4096).Clear();
            }

            // 15 data runs of one page, each counted as 2 slots: 31 slots, more than 64 KiB of pipe holds.
            const int offset = 1000;
            const int length = (120 << 10) - 1000;
            var before = Interlocked.Read(ref NbdTransmission.SplicedReads);
            await client.SendRequestAsync(NbdCommand.Read, offset, length, cookie: 2);
            var (cookie, data, chunks) = await client.ReadStructuredReadAsync(_ => (offset, length));
            Assert.Equal(2UL, cookie);
            Assert.True(chunks.Count > 20, $"only {chunks.Count} chunks: the holes were not reported");
            Assert.True(content.AsSpan(offset, length).SequenceEqual(data), "the read differs from the file");
            Assert.Equal(spliced, Interlocked.Read(ref NbdTransmission.SplicedReads) > before);
        }
        finally
        {
            NbdTransmission.PipeLimit = saved;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Spliced_replies_to_a_client_that_reads_late_arrive_whole(bool structured)
    {
        // Sixteen reads of 900 KB are more than the socket holds: the splice into the socket stops part way, and
        // the rest goes out as the client makes room.
        var content = new byte[Size];
        new Random(31).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured);
        var reads = Enumerable.Range(0, NbdTransmission.MaxInFlight)
            .Select(i => (Cookie: (ulong)i, Offset: i * 411_001, Length: 900_000 + i * 999))
            .ToDictionary(r => r.Cookie);
        await client.WriteAsync([.. reads.Values.SelectMany(r => RawNbdClient.Request(NbdCommand.Read, (ulong)r.Offset, (uint)r.Length, r.Cookie))]);
        await Task.Delay(300);

        for (var i = 0; i < reads.Count; i++)
        {
            var (cookie, data) = await client.ReadReadReplyAsync(structured, c => ((ulong)reads[c].Offset, reads[c].Length));
            Assert.True(content.AsSpan(reads[cookie].Offset, reads[cookie].Length).SequenceEqual(data), $"read {cookie} differs");
        }
    }

    /// <summary>
    /// A connection's pipes go back to the process's pool as its replies go out: a quiet connection holds none, and
    /// the next client's reads take them instead of opening pipes of their own against the descriptor budget.
    /// </summary>
    [Fact]
    public async Task A_quiet_connection_holds_no_pipes_and_the_next_client_reuses_them()
    {
        var content = new byte[Size];
        new Random(37).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);
        await using var busy = await RawNbdClient.ConnectAsync(nbd.Port);
        await busy.GoAsync(NbdFixture.ExportName, structured: false);
        var reads = Enumerable.Range(0, NbdTransmission.MaxInFlight).ToDictionary(i => (ulong)i, i => (Offset: i * 123_457, Length: 200_000));
        await busy.WriteAsync([.. reads.SelectMany(r => RawNbdClient.Request(NbdCommand.Read, (ulong)r.Value.Offset, (uint)r.Value.Length, r.Key))]);
        for (var i = 0; i < reads.Count; i++)
        {
            var (cookie, data) = await busy.ReadReadReplyAsync(false, c => ((ulong)reads[c].Offset, reads[c].Length));
            Assert.True(content.AsSpan(reads[cookie].Offset, reads[cookie].Length).SequenceEqual(data), $"read {cookie} differs");
        }

        // busy is still connected, and quiet: every pipe open is idle in the pool (the last reply's pipe goes back
        // just after its bytes are sent, so give it a moment).
        for (var wait = 0; wait < 100 && SplicePipe.OpenCount != SplicePipe.IdleCount; wait++)
        {
            await Task.Delay(10);
        }

        var open = SplicePipe.OpenCount;
        Assert.True(open > 0, "no read was spliced");
        Assert.Equal(open, SplicePipe.IdleCount);

        await using var next = await RawNbdClient.ConnectAsync(nbd.Port);
        await next.GoAsync(NbdFixture.ExportName, structured: false);
        var before = Interlocked.Read(ref NbdTransmission.SplicedReads);
        for (var i = 0; i < 8; i++)
        {
            await next.SendRequestAsync(NbdCommand.Read, (ulong)i * 77_777, 150_000, cookie: (ulong)i);
            var (error, _) = await next.ReadSimpleReplyAsync();
            Assert.Equal(NbdError.None, error);
            var data = await next.ReadAsync(150_000);
            Assert.True(content.AsSpan(i * 77_777, 150_000).SequenceEqual(data), $"read {i} differs");
        }

        Assert.Equal(8, Interlocked.Read(ref NbdTransmission.SplicedReads) - before);
        Assert.Equal(open, SplicePipe.OpenCount);
    }

    [Fact]
    public async Task A_client_gone_mid_reply_leaves_the_server_serving_the_next()
    {
        var content = new byte[Size];
        new Random(41).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);
        for (var round = 0; round < 3; round++)
        {
            var gone = await RawNbdClient.ConnectAsync(nbd.Port);
            await gone.GoAsync(NbdFixture.ExportName, structured: round % 2 == 0);
            await gone.WriteAsync([.. Enumerable.Range(0, NbdTransmission.MaxInFlight).SelectMany(i => RawNbdClient.Request(NbdCommand.Read, (ulong)i * 300_000, 1_000_000, (ulong)i))]);
            _ = await gone.ReadAsync(100_000);
            gone.Abort();
        }

        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured: false);
        await client.SendRequestAsync(NbdCommand.Read, 12_345, 500_000, cookie: 7);
        var (error, cookie) = await client.ReadSimpleReplyAsync();
        Assert.Equal((NbdError.None, 7UL), (error, cookie));
        var data = await client.ReadAsync(500_000);
        Assert.True(content.AsSpan(12_345, 500_000).SequenceEqual(data));
    }
}

/// <summary>The spliced-read tests change a static limit of the server's pipes: nothing else runs meanwhile.</summary>
[CollectionDefinition(nameof(NbdSplicedReadTests), DisableParallelization = true)]
public sealed class NbdSplicedReadCollection;
