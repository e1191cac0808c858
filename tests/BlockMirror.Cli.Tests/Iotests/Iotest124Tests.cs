using System.Text.Json.Nodes;
using BlockMirror.TestKit;
using static BlockMirror.Cli.Tests.Iotests.BitmapQueries;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// The bitmap management of QEMU's iotest 124 (incremental backup), run unchanged on qemu-storage-daemon 7.2 and on
/// <c>blockmirror serve</c>: bitmaps of the default, a smaller and a larger granularity following the iotest's
/// writes, bitmaps cleared together in a transaction, a granularity that is no power of two, and bitmaps named alike
/// on two drives; with 257-style merges (bitmaps of other granularities and of another node merged into one).
/// Every reply and every listing (count, granularity, recording) must agree.
/// </summary>
/// <remarks>
/// BlockMirror has no backup job, so where the iotest takes an incremental backup (which hands the bitmap's bits to
/// the job and leaves it clear) these clear the bitmap, and the listing before the clear stands for what the backup
/// would copy. The writes go through NBD exports of the drives (qemu-io), where the iotest uses hmp qemu-io. The
/// failing action is a clear: qemu-storage-daemon 7.2 crashes when an enable or disable action fails in a transaction
/// (its undo reads the bitmap it did not find); ours refuses it (QmpBitmapCommandTests).
/// </remarks>
public sealed class Iotest124Tests : IDisposable
{
    readonly TempDirectory _root = new("bm-iotest124-");

    public void Dispose() => _root.Dispose();

    static readonly string[] FirstWrites = ["write -P0xab 0 512", "write -P0xfe 16M 256k", "write -P0x64 32736k 64k", "flush"];
    static readonly string[] SecondWrites = ["write -P0x9a 0 512", "write -P0x55 8M 352k", "write -P0x78 15872k 1M", "flush"];

    /// <summary>124's setUp: drive0 (and with <paramref name="drives"/> 2 drive1, as test_transaction_failure adds it), 64 MiB, with its default pattern.</summary>
    static Func<string, Task> SetUp(int drives = 1) => async dir =>
    {
        string[][] patterns =
        [
            ["write -P0x41 0 512", "write -P0xd5 1M 32k", "write -P0xdc 32M 124k"],
            ["write -P0x14 0 512", "write -P0x5d 1M 32k", "write -P0xcd 32M 124k"],
        ];
        for (var i = 0; i < drives; i++)
        {
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", $"{dir}/drive{i}.qcow2", "64M");
            await ExternalTool.RunCheckedAsync("qemu-io", [.. patterns[i].SelectMany(p => new[] { "-c", p }), $"{dir}/drive{i}.qcow2"]);
        }
    };

    static Func<string, string[]> Drives(int count) => dir => [.. Enumerable.Range(0, count).SelectMany(i => IotestRun.Qcow2Node(dir, $"drive{i}", $"drive{i}.qcow2"))];

    static JsonObject Add(string node, string name, long? granularity = null)
    {
        var data = Bitmap(node, name);
        if (granularity is { } g)
        {
            data["granularity"] = g;
        }

        return data;
    }

    /// <summary>test_incremental_simple, test_small_granularity, test_large_granularity: two rounds of writes, each what an incremental backup would take.</summary>
    [SkippableTheory]
    [InlineData(null)]
    [InlineData(32768L)]
    [InlineData(131072L)]
    public async Task test_incremental_simple(long? granularity)
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root, SetUp(), Drives(1), "drive0", async s =>
        {
            await s.RunAsync("block-dirty-bitmap-add", Add("drive0", "bitmap0", granularity));
            // The "hollow" incremental: nothing written yet.
            await LogAsync(s, "drive0");
            await WriteAsync(s, FirstWrites);
            await LogAsync(s, "drive0");
            await s.RunAsync("block-dirty-bitmap-clear", Bitmap("drive0", "bitmap0"));
            await WriteAsync(s, SecondWrites);
            await LogAsync(s, "drive0");
        });

        // One complete overwrite, one new segment, one partial overlap: counted in whole chunks.
        var chunk = granularity ?? 65536;
        long Chunks(params (long Offset, long Length)[] writes) =>
            writes.SelectMany(w => Enumerable.Range(0, (int)((w.Offset + w.Length - 1) / chunk - w.Offset / chunk + 1)).Select(i => w.Offset / chunk + i)).Distinct().Count() * chunk;
        Assert.Equal($"count={Chunks((0, 512), (16 << 20, 256 << 10), (32736 << 10, 64 << 10))}", Count(qsd.Log[2]));
        Assert.Equal($"count={Chunks((0, 512), (8 << 20, 352 << 10), (15872 << 10, 1 << 20))}", Count(qsd.Log[4]));
    }

    static string Count(string line) => line.Split(' ').Single(w => w.StartsWith("count=", StringComparison.Ordinal));

    /// <summary>test_incremental_transaction: a bitmap added before the writes and one after, cleared together by a transaction (there with a full backup), then in step.</summary>
    [SkippableFact]
    public async Task test_incremental_transaction()
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root, SetUp(), Drives(1), "drive0", async s =>
        {
            await s.RunAsync("block-dirty-bitmap-add", Add("drive0", "bitmap0"));
            await WriteAsync(s, FirstWrites);
            await s.RunAsync("block-dirty-bitmap-add", Add("drive0", "bitmap1"));
            await LogAsync(s, "drive0");
            await s.RunAsync("transaction", Transaction(
                Action("block-dirty-bitmap-clear", Bitmap("drive0", "bitmap0")),
                Action("block-dirty-bitmap-clear", Bitmap("drive0", "bitmap1"))));
            await WriteAsync(s, SecondWrites);
            await LogAsync(s, "drive0");
        });

        var last = qsd.Log[^1].Split("; ");
        Assert.Equal(Count(last[0]), Count(last[1]));
        Assert.NotEqual("count=0", Count(last[0]));
    }

    /// <summary>test_sync_dirty_bitmap_bad_granularity: 64000 is no power of two.</summary>
    [SkippableFact]
    public async Task test_sync_dirty_bitmap_bad_granularity()
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root, SetUp(), Drives(1), "drive0", async s =>
        {
            await s.TryAsync("block-dirty-bitmap-add", Add("drive0", "bitmap0", 64000));
            await LogAsync(s, "drive0");
        });
        Assert.Equal(["block-dirty-bitmap-add: GenericError: Granularity must be power of 2 and at least 512", "bitmaps drive0: none"], qsd.Log);
    }

    /// <summary>
    /// test_transaction_failure's bitmaps: bitmap0 on each of two drives, each written through its own export; a
    /// transaction over both drives that fails at its last action changes neither; 257-style, both drives' bitmaps
    /// and one of another granularity merged into a new bitmap; then the transaction again, without the failure.
    /// </summary>
    [SkippableFact]
    public async Task test_transaction_failure_bitmaps_and_merges_across_drives()
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root, SetUp(drives: 2), Drives(2), "drive0", async s =>
        {
            await s.RunAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "exp1", ["node-name"] = "drive1", ["name"] = "drive1", ["writable"] = true });
            await s.RunAsync("block-dirty-bitmap-add", Add("drive0", "bitmap0"));
            await s.RunAsync("block-dirty-bitmap-add", Add("drive1", "bitmap0"));
            await s.RunAsync("block-dirty-bitmap-add", Add("drive0", "fine", 4096));
            await WriteAsync(s, FirstWrites);
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write -P0xba 0 512", "-c", "write -P0xef 16M 256k", "-c", "write -P0x46 32736k 64k",
                s.Uri.Replace("///disk?", "///drive1?", StringComparison.Ordinal));
            await LogAsync(s, "drive0", "drive1");

            JsonObject[] both =
            [
                Action("block-dirty-bitmap-add", Add("drive0", "union", 131072)),
                Action("block-dirty-bitmap-merge", new JsonObject
                {
                    ["node"] = "drive0", ["target"] = "union",
                    ["bitmaps"] = new JsonArray("bitmap0", "fine", Bitmap("drive1", "bitmap0")),
                }),
                Action("block-dirty-bitmap-clear", Bitmap("drive0", "bitmap0")),
                Action("block-dirty-bitmap-clear", Bitmap("drive1", "bitmap0")),
            ];
            await s.TryAsync("transaction", Transaction([.. both.Select(a => (JsonObject)a.DeepClone()), Action("block-dirty-bitmap-clear", Bitmap("drive1", "nope"))]));
            await LogAsync(s, "drive0", "drive1");
            await s.RunAsync("transaction", Transaction(both));
            await LogAsync(s, "drive0", "drive1");
        });

        // The failed transaction changed nothing; the second cleared both bitmap0s into the union.
        Assert.Equal("transaction: GenericError: Dirty bitmap 'nope' not found", qsd.Log[6]);
        Assert.Equal(qsd.Log[4..6], qsd.Log[7..9]);
        Assert.Contains("name=\"union\"", qsd.Log[^2], StringComparison.Ordinal);
    }
}
