using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// The transmission loop under a pipelining client: write payloads read partly from the pipe and partly
/// straight from the socket, whatever way the bytes are cut on the wire; replies queued by many requests
/// and sent in batches, each with its own data.
/// </summary>
public sealed class NbdTransmissionTests
{
    const int Size = 8 << 20;

    /// <summary>Payload sizes around the pipe's read size (16 KiB), the reply coalescing limit (4 KiB) and beyond.</summary>
    static readonly int[] Lengths = [1, 511, 4095, 4096, 4097, 16356, 16384, 16413, 65536, 300_001, (1 << 20) + 3];

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 2)]
    [InlineData(false, 3)]
    [InlineData(true, 4)]
    public async Task Pipelined_writes_and_reads_cut_at_random_points_all_land_and_read_back(bool structured, int seed)
    {
        var random = new Random(seed);
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured);
        var model = new byte[Size];

        // Writes that do not overlap (in-flight requests have no order among themselves), all sent before
        // any reply is read.
        var writes = new List<(ulong Cookie, int Offset, byte[] Data)>();
        var next = 0;
        foreach (var length in Lengths.Concat(Lengths).OrderBy(_ => random.Next()))
        {
            var offset = next + random.Next(0, 3000);
            if (offset + length > Size)
            {
                break;
            }

            var data = new byte[length];
            random.NextBytes(data);
            writes.Add(((ulong)(100 + writes.Count), offset, data));
            data.CopyTo(model, offset);
            next = offset + length;
        }

        var stream = writes.SelectMany(w => Request(NbdCommand.Write, w.Cookie, (ulong)w.Offset, (uint)w.Data.Length, w.Data)).ToArray();
        var sending = SendInPiecesAsync(client, stream, random.Next());
        var answered = new HashSet<ulong>();
        for (var i = 0; i < writes.Count; i++)
        {
            // Simple replies for writes, structured replies negotiated or not (as QEMU's server answers).
            var (error, cookie) = await client.ReadSimpleReplyAsync();
            Assert.Equal(NbdError.None, error);
            Assert.True(answered.Add(cookie), $"cookie {cookie} answered twice");
        }

        await sending;
        Assert.Equal(writes.Select(w => w.Cookie).ToHashSet(), answered);
        Assert.Equal(model, await File.ReadAllBytesAsync(nbd.ImagePath));

        // Reads of every size, small ones coalesced with their headers and large ones sent from their own
        // buffers, in whatever order they finish.
        var reads = Enumerable.Range(0, 40)
            .Select(i => (Cookie: (ulong)(1000 + i), Length: Lengths[random.Next(Lengths.Length)]))
            .Select(r => (r.Cookie, Offset: random.Next(0, Size - r.Length), r.Length))
            .ToList();
        sending = SendInPiecesAsync(client, [.. reads.SelectMany(r => Request(NbdCommand.Read, r.Cookie, (ulong)r.Offset, (uint)r.Length, []))], random.Next());
        var byCookie = reads.ToDictionary(r => r.Cookie);
        for (var i = 0; i < reads.Count; i++)
        {
            // Structured: data and hole chunks (the image file is sparse where nothing was written).
            var (cookie, data) = await client.ReadReadReplyAsync(structured, c => ((ulong)byCookie[c].Offset, byCookie[c].Length));
            var read = byCookie[cookie];
            Assert.True(model.AsSpan(read.Offset, read.Length).SequenceEqual(data), $"read {cookie} at {read.Offset} (+{read.Length}) differs");
            Assert.True(byCookie.Remove(cookie));
        }

        await sending;
        Assert.Empty(byCookie);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Replies_to_a_client_that_reads_late_arrive_whole_after_the_socket_filled(bool structured)
    {
        // Sixteen reads of 1 MiB and more are more than the socket holds: the gathered send stops part way
        // and the rest waits for room; the bytes must come out whole and in order all the same.
        var content = new byte[Size];
        new Random(5).NextBytes(content);
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false, content);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName, structured);
        var reads = Enumerable.Range(0, Server.NbdTransmission.MaxInFlight)
            .Select(i => (Cookie: (ulong)i, Offset: i * 411_000, Length: (1 << 20) + 1 + i * 999))
            .ToDictionary(r => r.Cookie);
        await client.WriteAsync([.. reads.Values.SelectMany(r => Request(NbdCommand.Read, r.Cookie, (ulong)r.Offset, (uint)r.Length, []))]);
        await Task.Delay(300);

        for (var i = 0; i < reads.Count; i++)
        {
            var (cookie, data) = await client.ReadReadReplyAsync(structured, c => ((ulong)reads[c].Offset, reads[c].Length));
            Assert.True(content.AsSpan(reads[cookie].Offset, reads[cookie].Length).SequenceEqual(data), $"read {cookie} differs");
        }
    }

    static byte[] Request(NbdCommand command, ulong cookie, ulong offset, uint length, byte[] payload) =>
        RawNbdClient.Request(command, offset, length, cookie, payload: payload);

    /// <summary>Sends <paramref name="bytes"/> in pieces of random size (1 byte to 70 KB), now and then after a pause.</summary>
    static Task SendInPiecesAsync(RawNbdClient client, byte[] bytes, int seed) => Task.Run(async () =>
    {
        var random = new Random(seed);
        for (var sent = 0; sent < bytes.Length;)
        {
            var piece = Math.Min(bytes.Length - sent, random.Next(4) == 0 ? random.Next(1, 64) : random.Next(1, 70_000));
            await client.WriteAsync(bytes[sent..(sent + piece)]);
            sent += piece;
            if (random.Next(8) == 0)
            {
                await Task.Delay(2);
            }
        }
    });
}
