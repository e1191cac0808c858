using System.Text.Json.Nodes;
using BlockMirror.TestKit;
using static BlockMirror.Cli.Tests.Iotests.BitmapQueries;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 236, "bitmap merges" through transactions, run unchanged on qemu-storage-daemon 7.2 and on
/// <c>blockmirror serve</c>: a 64 MiB qcow2 exported and written through qemu-io, bitmaps A and B, a transaction
/// that disables B, adds C and clears A and then aborts (nothing may change), the same without the abort, a merge
/// transaction aborted and then committed. Every reply and every bitmap listing must agree, and the counts must be
/// the iotest's (A and the merge D 7 clusters, B 4, C 6).
/// </summary>
/// <remarks>
/// The iotest reads the bitmaps from query-block's drive; a storage daemon has no drive, so they are read from
/// query-named-block-nodes, and its sha256 comparison of A and D (x-debug-block-dirty-bitmap-sha256, which
/// BlockMirror does not have) becomes a comparison of their counts after one more write to a clean cluster.
/// </remarks>
public sealed class Iotest236Tests : IDisposable
{
    readonly TempDirectory _root = new("bm-iotest236-");

    public void Dispose() => _root.Dispose();

    const int Granularity = 64 * 1024;

    static JsonObject Add(string name, bool disabled = false)
    {
        var data = new JsonObject { ["node"] = "drive0", ["name"] = name, ["granularity"] = Granularity };
        if (disabled)
        {
            data["disabled"] = true;
        }

        return data;
    }

    static JsonObject Drive0(string name) => Bitmap("drive0", name);

    [SkippableFact]
    public async Task Bitmap_merges_and_transactions()
    {
        var (qsd, _) = await IotestRun.OnBothAsync(_root,
            dir => ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", $"{dir}/img", "64M"),
            dir => IotestRun.Qcow2Node(dir, "drive0", "img"), "drive0", async s =>
            {
                await s.RunAsync("block-dirty-bitmap-add", Add("bitmapA"));
                await s.RunAsync("block-dirty-bitmap-add", Add("bitmapB"));
                // Dirties 4 clusters.
                await WriteAsync(s, "write -P0x5d 0 64k", "write -P0xd5 1M 64k", "write -P0xdc 32M 64k", "write -P0xcd 0x3ff0000 64k");
                await LogAsync(s, "drive0");

                // Submitting and aborting a transaction: nothing changes.
                await s.TryAsync("transaction", Transaction(
                    Action("block-dirty-bitmap-disable", Drive0("bitmapB")),
                    Action("block-dirty-bitmap-add", Add("bitmapC")),
                    Action("block-dirty-bitmap-clear", Drive0("bitmapA")),
                    Action("abort", [])));
                await LogAsync(s, "drive0");

                // Disabling B and adding C (disabled and enabled again, extraneously).
                await s.RunAsync("transaction", Transaction(
                    Action("block-dirty-bitmap-disable", Drive0("bitmapB")),
                    Action("block-dirty-bitmap-add", Add("bitmapC")),
                    Action("block-dirty-bitmap-disable", Drive0("bitmapC")),
                    Action("block-dirty-bitmap-enable", Drive0("bitmapC"))));

                // Dirties 6 clusters, 3 of them new to A: full overwrite, partial left, partial right, adjacent left.
                await WriteAsync(s, "write -P0xab 0 64k", "write -P0xad 0x00f8000 64k", "write -P0x1d 0x2008000 64k", "write -P0xea 0x3fe0000 64k");

                await s.RunAsync("transaction", Transaction(
                    Action("block-dirty-bitmap-disable", Drive0("bitmapA")),
                    Action("block-dirty-bitmap-disable", Drive0("bitmapC"))));
                await LogAsync(s, "drive0");

                // Submitting and aborting a merge transaction: D does not appear.
                JsonObject[] makeD =
                [
                    Action("block-dirty-bitmap-add", Add("bitmapD", disabled: true)),
                    Action("block-dirty-bitmap-merge", new JsonObject { ["node"] = "drive0", ["target"] = "bitmapD", ["bitmaps"] = new JsonArray("bitmapB", "bitmapC") }),
                ];
                await s.TryAsync("transaction", Transaction([.. makeD.Select(a => (JsonObject)a.DeepClone()), Action("abort", [])]));
                await LogAsync(s, "drive0");

                // Creating D as a merge of B and C.
                await s.RunAsync("transaction", Transaction(makeD));
                await LogAsync(s, "drive0");

                // A and D mark the same clusters: one more write to a cluster neither marks keeps their counts equal once
                // both record it (the iotest compares their checksums instead).
                await s.RunAsync("block-dirty-bitmap-enable", Drive0("bitmapA"));
                await s.RunAsync("block-dirty-bitmap-enable", Drive0("bitmapD"));
                await WriteAsync(s, "write -P0x77 16M 4k");
                await LogAsync(s, "drive0");

                foreach (var name in new[] { "bitmapA", "bitmapB", "bitmapC", "bitmapD" })
                {
                    await s.RunAsync("block-dirty-bitmap-remove", Drive0(name));
                }

                await LogAsync(s, "drive0");
            });

        static string Info(string name, int clusters, bool recording) =>
            $"busy=false count={clusters * Granularity} granularity={Granularity} name=\"{name}\" persistent=false recording={(recording ? "true" : "false")}";
        Assert.Equal(
        [
            "block-dirty-bitmap-add: ok", "block-dirty-bitmap-add: ok",
            $"bitmaps drive0: {Info("bitmapB", 4, true)}; {Info("bitmapA", 4, true)}",
            "transaction: GenericError: Transaction aborted using Abort action",
            $"bitmaps drive0: {Info("bitmapB", 4, true)}; {Info("bitmapA", 4, true)}",
            "transaction: ok", "transaction: ok",
            $"bitmaps drive0: {Info("bitmapC", 6, false)}; {Info("bitmapB", 4, false)}; {Info("bitmapA", 7, false)}",
            "transaction: GenericError: Transaction aborted using Abort action",
            $"bitmaps drive0: {Info("bitmapC", 6, false)}; {Info("bitmapB", 4, false)}; {Info("bitmapA", 7, false)}",
            "transaction: ok",
            $"bitmaps drive0: {Info("bitmapD", 7, false)}; {Info("bitmapC", 6, false)}; {Info("bitmapB", 4, false)}; {Info("bitmapA", 7, false)}",
            "block-dirty-bitmap-enable: ok", "block-dirty-bitmap-enable: ok",
            $"bitmaps drive0: {Info("bitmapD", 8, true)}; {Info("bitmapC", 6, false)}; {Info("bitmapB", 4, false)}; {Info("bitmapA", 8, true)}",
            "block-dirty-bitmap-remove: ok", "block-dirty-bitmap-remove: ok", "block-dirty-bitmap-remove: ok", "block-dirty-bitmap-remove: ok",
            "bitmaps drive0: none",
        ], qsd.Log);
    }
}
