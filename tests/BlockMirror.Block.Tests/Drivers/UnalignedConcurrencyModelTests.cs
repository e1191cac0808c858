using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// Concurrent, overlapping, unaligned writes, write-zeroes, discards and reads against nodes that must pad
/// (O_DIRECT; blkdebug with an alignment and small maximums, which fails any request that breaks them).
/// Requests of a round crowd into one small window, so their padded blocks collide all the time; a
/// read-modify-write that is not serialised loses a neighbour's bytes, and the round's check sees it.
/// </summary>
/// <remarks>
/// Overlapping requests of one round have no order, so the check of a round is per byte: a byte no
/// request touched keeps its value; a byte only one write touched has that write's value; a byte several
/// touched has one of their values; a discarded byte may also keep its old value or read zero. Reads that
/// ran during the round obey the same rule, with the old value always allowed. The device is then read
/// back into the model and the next round starts from it.
/// </remarks>
public sealed class UnalignedConcurrencyModelTests : IDisposable
{
    const long Size = 1 << 20;
    const int Window = 48 * 1024;
    const int Rounds = 60;
    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    enum Kind
    {
        Write,
        Zeroes,
        Discard,
        Read,
    }

    sealed record Request(Kind Kind, long Offset, int Length, byte[]? Data, bool Vectored);

    [SkippableFact]
    public async Task An_O_DIRECT_file_loses_nothing()
    {
        await Seeds.RunAsync(Seeds.Range(4), async seed =>
        {
            var path = _dir.File($"direct-{seed}.raw");
            FileDriver.CreateFile(path, Size, overwrite: true);
            await using var graph = new BlockGraph();
            var node = await FileDriver.OpenAsync(graph, "disk", new FileDriverOptions(path, Direct: true, Discard: FileDiscardMode.Unmap));
            await RunAsync(graph.AttachRoot(node, new RootParent("test")), seed);
        });
    }

    [Fact]
    public async Task Blkdebug_with_align_and_small_maximums_loses_nothing()
    {
        await Seeds.RunAsync(Seeds.Range(4), async seed =>
        {
            await using var graph = new BlockGraph();
            var disk = await MemoryDriver.OpenAsync(graph, "disk", new MemoryDriverOptions(Size));
            var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", disk,
                new BlkdebugOptions(Align: 1024, MaxTransfer: 4096, MaxWriteZeroes: 2048, MaxDiscard: 3072));
            await RunAsync(graph.AttachRoot(dbg, new RootParent("test")), seed);
        });
    }

    [SkippableFact]
    public async Task Blkdebug_with_a_small_max_transfer_over_an_O_DIRECT_file_loses_nothing()
    {
        await Seeds.RunAsync(Seeds.Range(2), async seed =>
        {
            var path = _dir.File($"direct-dbg-{seed}.raw");
            FileDriver.CreateFile(path, Size, overwrite: true);
            await using var graph = new BlockGraph();
            var file = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Direct: true, Discard: FileDiscardMode.Unmap));
            var dbg = await BlkdebugFilter.OpenAsync(graph, "dbg", file, new BlkdebugOptions(MaxTransfer: 8192, MaxWriteZeroes: 8192, MaxDiscard: 8192));
            await RunAsync(graph.AttachRoot(dbg, new RootParent("test")), seed);
        });
    }

    static async Task RunAsync(NodeEdge disk, int seed)
    {
        var random = new Random(seed);
        var model = new ByteModel(Size);
        await disk.ReadAsync(0, model.Bytes);
        for (var round = 0; round < Rounds; round++)
        {
            var start = random.NextInt64(0, Size - Window);
            var requests = Enumerable.Range(0, random.Next(2, 9)).Select(_ => NewRequest(random, start)).ToArray();
            var results = new byte[requests.Length][];

            // Each on its own thread, released together, so the padded blocks really are in flight at once.
            using var go = new ManualResetEventSlim();
            var tasks = requests.Select((r, i) => Task.Run(async () =>
            {
                go.Wait();
                results[i] = await ExecuteAsync(disk, r);
            })).ToArray();
            go.Set();
            await Task.WhenAll(tasks);

            var actual = new byte[Window];
            await disk.ReadAsync(start, actual);
            for (var i = 0; i < Window; i++)
            {
                var at = start + i;
                var old = model.Bytes[at];
                if (!Allowed(requests, at, actual[i], old, oldAllowed: false))
                {
                    Assert.Fail($"seed {seed} round {round}: byte {at} is 0x{actual[i]:x2} (was 0x{old:x2}); requests: " +
                        string.Join(", ", requests.Select(r => $"{r.Kind} [{r.Offset}, +{r.Length})")));
                }
            }

            for (var r = 0; r < requests.Length; r++)
            {
                if (requests[r].Kind != Kind.Read)
                {
                    continue;
                }

                for (var i = 0; i < requests[r].Length; i++)
                {
                    var at = requests[r].Offset + i;
                    if (!Allowed(requests, at, results[r][i], model.Bytes[at], oldAllowed: true))
                    {
                        Assert.Fail($"seed {seed} round {round}: a concurrent read saw 0x{results[r][i]:x2} at {at}, which nothing wrote there");
                    }
                }
            }

            model.Write(start, actual);
        }

        var all = new byte[Size];
        await disk.ReadAsync(0, all);
        Assert.Equal(-1, model.FirstDifference(all));
    }

    static Request NewRequest(Random random, long windowStart)
    {
        // Mostly short (inside a block or two, where padding collides), sometimes up to 20 KiB.
        var length = random.Next(4) == 0 ? random.Next(1, 20_000) : random.Next(1, 1500);
        var offset = windowStart + random.NextInt64(0, Window - length);
        var kind = random.Next(100) switch
        {
            < 55 => Kind.Write,
            < 70 => Kind.Zeroes,
            < 80 => Kind.Discard,
            _ => Kind.Read,
        };
        byte[]? data = null;
        if (kind == Kind.Write)
        {
            data = new byte[length];
            random.NextBytes(data);
        }

        return new Request(kind, offset, length, data, random.Next(3) == 0);
    }

    static async Task<byte[]> ExecuteAsync(NodeEdge disk, Request r)
    {
        switch (r.Kind)
        {
            case Kind.Write when r.Vectored && r.Length > 1:
                var half = r.Length / 2;
                await disk.WriteVectorAsync(r.Offset, [r.Data.AsMemory(0, half), r.Data.AsMemory(half)]);
                return [];
            case Kind.Write:
                await disk.WriteAsync(r.Offset, r.Data);
                return [];
            case Kind.Zeroes:
                await disk.WriteZeroesAsync(r.Offset, r.Length, r.Vectored ? RequestFlags.MayUnmap : RequestFlags.None);
                return [];
            case Kind.Discard:
                await disk.DiscardAsync(r.Offset, r.Length);
                return [];
            default:
                var buffer = new byte[r.Length];
                if (r.Vectored && r.Length > 1)
                {
                    var split = r.Length / 3 + 1;
                    await disk.ReadVectorAsync(r.Offset, [buffer.AsMemory(0, split), buffer.AsMemory(split)]);
                }
                else
                {
                    await disk.ReadAsync(r.Offset, buffer);
                }

                return buffer;
        }
    }

    /// <summary>Whether <paramref name="value"/> at <paramref name="at"/> is one the round's requests allow.</summary>
    static bool Allowed(Request[] requests, long at, byte value, byte old, bool oldAllowed)
    {
        var touched = false;
        foreach (var r in requests)
        {
            if (r.Kind == Kind.Read || at < r.Offset || at >= r.Offset + r.Length)
            {
                continue;
            }

            touched = true;
            switch (r.Kind)
            {
                case Kind.Write when value == r.Data![at - r.Offset]:
                case Kind.Zeroes when value == 0:
                case Kind.Discard when value == 0 || value == old:
                    return true;
            }
        }

        return (!touched || oldAllowed) && value == old;
    }
}
