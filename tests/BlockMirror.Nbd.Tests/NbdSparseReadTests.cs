using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// NBD_CMD_READ with structured replies over a sparse image: without NBD_CMD_FLAG_DF the reply is split by block
/// status into OFFSET_DATA and OFFSET_HOLE chunks, with it one data chunk; the bytes are the image's either way.
/// Compared chunk for chunk with qemu-storage-daemon 7.2 reading the same image.
/// </summary>
public sealed class NbdSparseReadTests
{
    const long Size = 1 << 20;
    const int K = 1024;

    /// <summary>Data written into the image (the rest is holes): 0x5a, 0xa5, and zeroes written as data.</summary>
    static readonly (int Offset, int Length, byte Value)[] Layout = [(0, 64 * K, 0x5a), (192 * K, 64 * K, 0xa5), (512 * K, 64 * K, 0)];

    /// <summary>Reads over data and holes, at and off the holes' edges; DF reads ask for one chunk.</summary>
    static readonly (ulong Offset, int Length, NbdCommandFlags Flags)[] Reads =
    [
        (0, 256 * K, 0),
        (64 * K, 128 * K, 0),
        (64 * K - 500, 1000, 0),
        (0, 64 * K, 0),
        (480 * K, 128 * K, 0),
        (0, (int)Size, 0),
        (0, 256 * K, NbdCommandFlags.DontFragment),
        (64 * K, 128 * K, NbdCommandFlags.DontFragment),
    ];

    static readonly (NbdChunkType, ulong, int)[][] Expected =
    [
        [(NbdChunkType.OffsetData, 0, 64 * K), (NbdChunkType.OffsetHole, 64 * K, 128 * K), (NbdChunkType.OffsetData, 192 * K, 64 * K)],
        [(NbdChunkType.OffsetHole, 64 * K, 128 * K)],
        [(NbdChunkType.OffsetData, 64 * K - 500, 500), (NbdChunkType.OffsetHole, 64 * K, 500)],
        [(NbdChunkType.OffsetData, 0, 64 * K)],
        // Zeroes written are data, not a hole: block status finds no hole there.
        [(NbdChunkType.OffsetHole, 480 * K, 32 * K), (NbdChunkType.OffsetData, 512 * K, 64 * K), (NbdChunkType.OffsetHole, 576 * K, 32 * K)],
        [(NbdChunkType.OffsetData, 0, 64 * K), (NbdChunkType.OffsetHole, 64 * K, 128 * K), (NbdChunkType.OffsetData, 192 * K, 64 * K),
         (NbdChunkType.OffsetHole, 256 * K, 256 * K), (NbdChunkType.OffsetData, 512 * K, 64 * K), (NbdChunkType.OffsetHole, 576 * K, (int)Size - 576 * K)],
        [(NbdChunkType.OffsetData, 0, 256 * K)],
        [(NbdChunkType.OffsetData, 64 * K, 128 * K)],
    ];

    [Fact]
    public async Task Reads_come_as_data_and_hole_chunks_and_with_df_as_one_data_chunk()
    {
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false);
        Lay(nbd.ImagePath);

        var chunks = await ReadAllAsync(nbd.Port);

        Assert.Equal(Expected, chunks);
    }

    [Fact]
    public async Task Without_structured_replies_a_read_over_holes_is_one_simple_reply()
    {
        await using var nbd = await NbdFixture.StartAsync(Size, writable: false);
        Lay(nbd.ImagePath);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.GoAsync(NbdFixture.ExportName);

        await client.SendRequestAsync(NbdCommand.Read, 0, 256 * K, cookie: 9);

        Assert.Equal((NbdError.None, 9UL), await client.ReadSimpleReplyAsync());
        Assert.Equal(Image()[..(256 * K)], await client.ReadAsync(256 * K));
    }

    [SkippableFact]
    public async Task Qemu_storage_daemon_7_2_sends_the_same_chunks()
    {
        var qsd = ExternalTool.Require("qemu-storage-daemon");
        using var dir = new TempDirectory("blockmirror-qsd-");
        var path = ExternalNbdDaemon.NewImage(dir, Size);

        Lay(path);
        var chunks = await ExternalNbdDaemon.RunAsync(qsd, port =>
        [
            "--blockdev", $"driver=file,node-name=file0,filename={path}",
            "--blockdev", "driver=raw,node-name=disk,file=file0",
            "--nbd-server", $"addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
            "--export", "type=nbd,id=exp0,node-name=disk,name=disk",
        ], ReadAllAsync).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(Expected, chunks);
    }

    /// <summary>Sends every read of <see cref="Reads"/>, one at a time, checks its bytes against the image and returns its chunks.</summary>
    static async Task<(NbdChunkType, ulong, int)[][]> ReadAllAsync(int port)
    {
        await using var client = await RawNbdClient.ConnectAsync(port);
        var (_, flags) = await client.GoAsync(NbdFixture.ExportName, structured: true);
        Assert.True(flags.HasFlag(NbdTransmissionFlags.SendDf));
        var image = Image();
        var all = new List<(NbdChunkType, ulong, int)[]>();
        for (var i = 0; i < Reads.Length; i++)
        {
            var (offset, length, readFlags) = Reads[i];
            await client.SendRequestAsync(NbdCommand.Read, offset, (uint)length, cookie: (ulong)i, flags: readFlags);
            var (cookie, data, chunks) = await client.ReadStructuredReadAsync(_ => (offset, length));
            Assert.Equal((ulong)i, cookie);
            Assert.True(image.AsSpan((int)offset, length).SequenceEqual(data), $"read {i} at {offset} (+{length}) differs");
            all.Add([.. chunks]);
        }

        return [.. all];
    }

    /// <summary>Writes <see cref="Layout"/> into the sparse file at <paramref name="path"/>, leaving the rest holes.</summary>
    static void Lay(string path)
    {
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        foreach (var (offset, length, value) in Layout)
        {
            var bytes = new byte[length];
            Array.Fill(bytes, value);
            RandomAccess.Write(file, bytes, offset);
        }

        RandomAccess.FlushToDisk(file);
    }

    static byte[] Image()
    {
        var image = new byte[Size];
        foreach (var (offset, length, value) in Layout)
        {
            image.AsSpan(offset, length).Fill(value);
        }

        return image;
    }
}
