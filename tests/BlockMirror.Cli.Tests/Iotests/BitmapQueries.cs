using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>What the bitmap tests log and compare: a node's dirty bitmaps as query-named-block-nodes lists them, and an image's stored bitmaps as qemu-img info lists them.</summary>
static class BitmapQueries
{
    /// <summary>
    /// Logs "bitmaps NODE: ..." for each node: every BlockDirtyInfo in the daemon's order, each with all its members
    /// (the member names sorted, so that both daemons' lines compare whatever order they write them in); "none" when
    /// the node has no dirty-bitmaps member.
    /// </summary>
    public static async Task LogAsync(IotestSession s, params string[] nodes)
    {
        var all = (await s.Qmp.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
        foreach (var name in nodes)
        {
            var node = all.Single(n => (string?)n!["node-name"] == name)!;
            s.Log.Add($"bitmaps {name}: {Describe(node["dirty-bitmaps"])}");
        }
    }

    /// <summary>A BlockDirtyInfo list as one line; "none" for no list.</summary>
    public static string Describe(JsonNode? bitmaps) => bitmaps is not JsonArray list ? "none"
        : string.Join("; ", list.Select(b => string.Join(" ", b!.AsObject().OrderBy(m => m.Key, StringComparer.Ordinal).Select(m => $"{m.Key}={m.Value?.ToJsonString()}"))));

    /// <summary>The bitmaps qemu-img info reads from a qcow2 file: "name granularity [flags]" each, or "none".</summary>
    public static async Task<string> StoredAsync(string file)
    {
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "-U", "--output=json", file));
        var data = info.RootElement.GetProperty("format-specific").GetProperty("data");
        return !data.TryGetProperty("bitmaps", out var bitmaps) || bitmaps.GetArrayLength() == 0 ? "none"
            : string.Join("; ", bitmaps.EnumerateArray().Select(b =>
                $"{b.GetProperty("name").GetString()} {b.GetProperty("granularity").GetInt64()} [{string.Join(",", b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()))}]"));
    }

    /// <summary>Writes through the export with qemu-io (the commands as iotests give them to hmp qemu-io).</summary>
    public static Task WriteAsync(IotestSession s, params string[] commands)
    {
        var arguments = new List<string> { "-f", "raw" };
        foreach (var command in commands)
        {
            arguments.AddRange(["-c", command]);
        }

        return ExternalTool.RunCheckedAsync("qemu-io", [.. arguments, s.Uri]);
    }

    public static JsonObject Bitmap(string node, string name) => new() { ["node"] = node, ["name"] = name };

    public static JsonObject Action(string type, JsonObject data) => new() { ["type"] = type, ["data"] = data };

    public static JsonObject Transaction(params JsonObject[] actions) => new() { ["actions"] = new JsonArray([.. actions]) };
}
