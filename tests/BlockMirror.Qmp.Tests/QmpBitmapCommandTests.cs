using System.Text.Json.Nodes;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// The bitmap commands and transaction where there is no qemu-storage-daemon 7.2 answer to compare with (it refuses
/// those actions differently, or crashes): an action type we do not implement, completion-mode=grouped with an
/// enable, a merge of no bitmaps, a bitmap in use by an operation; and the undo of every action, checked on the bits.
/// BitmapCommandDifferentialTests and Iotest236Tests compare the rest with QEMU.
/// </summary>
public sealed class QmpBitmapCommandTests
{
    const long Chunk = 64 << 10;

    static JsonObject Bitmap(string name) => new() { ["node"] = "disk", ["name"] = name };

    static JsonObject Action(string type, JsonObject data) => new() { ["type"] = type, ["data"] = data };

    static JsonObject Transaction(params JsonObject[] actions) => new() { ["actions"] = new JsonArray([.. actions]) };

    /// <summary>A 1 MiB null-co node "disk" with bitmaps a (chunks 0 and 1 dirty) and b (chunk 2 dirty, disabled).</summary>
    static async Task<DaemonHarness> StartAsync()
    {
        var daemon = new DaemonHarness();
        await daemon.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "null-co", ["node-name"] = "disk", ["size"] = 1 << 20 });
        await daemon.ExecuteAsync("block-dirty-bitmap-add", Bitmap("a"));
        await daemon.ExecuteAsync("block-dirty-bitmap-add", Bitmap("b"));
        var node = daemon.Daemon.Graph.FindNode("disk")!;
        await node.WriteAsync(0, new byte[Chunk + 1]);
        await daemon.ExecuteAsync("block-dirty-bitmap-disable", Bitmap("a"));
        await node.WriteAsync(2 * Chunk, new byte[512]);
        await daemon.ExecuteAsync("block-dirty-bitmap-enable", Bitmap("a"));
        await daemon.ExecuteAsync("block-dirty-bitmap-disable", Bitmap("b"));
        return daemon;
    }

    /// <summary>"name:count:recording" for each bitmap of the node, as query-named-block-nodes lists them.</summary>
    static async Task<string> BitmapsAsync(DaemonHarness daemon)
    {
        var nodes = (await daemon.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
        var bitmaps = nodes.Single(n => (string?)n!["node-name"] == "disk")!["dirty-bitmaps"];
        return bitmaps is JsonArray list ? string.Join(" ", list.Select(b => $"{b!["name"]}:{b["count"]}:{b["recording"]}")) : "none";
    }

    [Fact]
    public async Task An_action_type_we_do_not_implement_is_refused_by_name_before_any_action_is_prepared()
    {
        await using var daemon = await StartAsync();
        var before = await BitmapsAsync(daemon);
        Assert.Equal("b:196608:false a:131072:true", before);
        var error = await daemon.ErrorAsync("transaction", Transaction(
            Action("block-dirty-bitmap-clear", Bitmap("a")),
            Action("drive-backup", new JsonObject { ["device"] = "disk", ["target"] = "/nonexistent/x", ["sync"] = "full" })));
        Assert.Equal("Transaction action 'drive-backup' is not supported (only abort and the block-dirty-bitmap-* actions are); nothing was done", error);
        Assert.Equal(before, await BitmapsAsync(daemon));
    }

    [Fact]
    public async Task Grouped_completion_is_refused_for_every_bitmap_action_and_changes_nothing()
    {
        await using var daemon = await StartAsync();
        var before = await BitmapsAsync(daemon);
        foreach (var (type, data) in new[] { ("block-dirty-bitmap-enable", Bitmap("b")), ("block-dirty-bitmap-clear", Bitmap("a")) })
        {
            var grouped = Transaction(Action(type, data));
            grouped["properties"] = new JsonObject { ["completion-mode"] = "grouped" };
            Assert.Equal($"Action '{type}' does not support Transaction property completion-mode = grouped", await daemon.ErrorAsync("transaction", grouped));
        }

        Assert.Equal(before, await BitmapsAsync(daemon));
    }

    [Fact]
    public async Task A_merge_of_no_bitmaps_changes_nothing()
    {
        await using var daemon = await StartAsync();
        var before = await BitmapsAsync(daemon);
        await daemon.ExecuteAsync("block-dirty-bitmap-merge", new JsonObject { ["node"] = "disk", ["target"] = "a", ["bitmaps"] = new JsonArray() });
        Assert.Equal(before, await BitmapsAsync(daemon));
    }

    [Fact]
    public async Task A_busy_bitmap_is_refused_by_every_command_but_add_and_listed_busy()
    {
        await using var daemon = await StartAsync();
        daemon.Daemon.Graph.FindNode("disk")!.DirtyBitmaps.Single(b => b.Name == "b").Busy = true;
        var busy = "Bitmap 'b' is currently in use by another operation and cannot be used";
        foreach (var command in new[] { "block-dirty-bitmap-remove", "block-dirty-bitmap-clear", "block-dirty-bitmap-enable", "block-dirty-bitmap-disable" })
        {
            Assert.Equal(busy, await daemon.ErrorAsync(command, Bitmap("b")));
        }

        Assert.Equal(busy, await daemon.ErrorAsync("block-dirty-bitmap-merge", new JsonObject { ["node"] = "disk", ["target"] = "a", ["bitmaps"] = new JsonArray("b") }));
        Assert.Equal(busy, await daemon.ErrorAsync("block-dirty-bitmap-merge", new JsonObject { ["node"] = "disk", ["target"] = "b", ["bitmaps"] = new JsonArray("a") }));
        var nodes = (await daemon.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
        Assert.True((bool)nodes.Single(n => (string?)n!["node-name"] == "disk")!["dirty-bitmaps"]![0]!["busy"]!);
    }

    [Fact]
    public async Task Every_action_prepared_before_a_failing_one_is_undone_bits_included()
    {
        await using var daemon = await StartAsync();
        var before = await BitmapsAsync(daemon);
        var error = await daemon.ErrorAsync("transaction", Transaction(
            Action("block-dirty-bitmap-add", Bitmap("c")),
            Action("block-dirty-bitmap-merge", new JsonObject { ["node"] = "disk", ["target"] = "c", ["bitmaps"] = new JsonArray("a", "b") }),
            Action("block-dirty-bitmap-clear", Bitmap("a")),
            Action("block-dirty-bitmap-merge", new JsonObject { ["node"] = "disk", ["target"] = "b", ["bitmaps"] = new JsonArray("a") }),
            Action("block-dirty-bitmap-enable", Bitmap("b")),
            Action("block-dirty-bitmap-disable", Bitmap("a")),
            Action("block-dirty-bitmap-remove", Bitmap("a")),
            Action("abort", [])));
        Assert.Equal("Transaction aborted using Abort action", error);
        Assert.Equal(before, await BitmapsAsync(daemon));

        // The bits themselves, not only their counts: a's are chunks 0 and 1 again, b's chunks 0 to 2.
        var node = daemon.Daemon.Graph.FindNode("disk")!;
        var a = node.DirtyBitmaps.Single(x => x.Name == "a");
        var b = node.DirtyBitmaps.Single(x => x.Name == "b");
        Assert.Equal([true, true, false], [a.IsDirty(0), a.IsDirty(Chunk), a.IsDirty(2 * Chunk)]);
        Assert.Equal([true, true, true], [b.IsDirty(0), b.IsDirty(Chunk), b.IsDirty(2 * Chunk)]);
        Assert.False(a.Busy);
    }
}
