using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// Hostile input over a real monitor connection: each bad command gets its error (QEMU's words) and the
/// connection goes on serving the next one.
/// </summary>
public sealed class QmpSessionInputTests
{
    static async Task<List<string>> RepliesAsync(QmpClient client, byte[] input)
    {
        await client.SendRawAsync((byte[])[.. input, .. "\n{\"execute\": \"query-version\", \"id\": \"next\"}\n"u8]);
        var replies = new List<string>();
        while (true)
        {
            var reply = await client.ReadObjectAsync(TimeSpan.FromSeconds(30));
            if (reply["id"] is JsonValue id && id.TryGetValue<string>(out var marker) && marker == "next")
            {
                Assert.True(reply.ContainsKey("return"), reply.ToJsonString());
                return replies;
            }

            replies.Add(reply["error"] is { } error ? (string)error["desc"]! : reply.ToJsonString());
        }
    }

    [Fact]
    public async Task Bad_utf8_and_lone_surrogates_get_an_error_and_the_next_command_is_served()
    {
        await using var monitor = new MonitorHarness("session-input");
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath);

        Assert.Equal(["JSON parse error, \\udc00 is not a valid Unicode character"],
            await RepliesAsync(client, """{"execute": "query-version", "id": "\udc00"}"""u8.ToArray()));
        Assert.Equal(["JSON parse error, invalid UTF-8 sequence in string"],
            await RepliesAsync(client, [.. """{"execute": "query-version", "id": "a"""u8, 0xC3, .. "\"}"u8]));
        Assert.Equal(["JSON parse error, stray '\"a\uFFFD'", "JSON parse error, expecting value"],
            await RepliesAsync(client, [.. """{"execute": "query-version", "id": "a"""u8, 0xFF, .. "\"}"u8]));
        Assert.Equal(["JSON parse error, duplicate key"],
            await RepliesAsync(client, """{"execute": "query-version", "execute": "query-version"}"""u8.ToArray()));
    }

    [Fact]
    public async Task Null_is_not_a_value_of_a_typed_argument()
    {
        await using var monitor = new MonitorHarness("session-null");
        await using var client = await QmpClient.ConnectAsync(monitor.SocketPath);

        Assert.Equal(["Invalid parameter type for 'size', expected: integer"],
            await RepliesAsync(client, """{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n", "size": null}}"""u8.ToArray()));
        Assert.Equal(["Invalid parameter type for 'node-name', expected: string"],
            await RepliesAsync(client, """{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": null}}"""u8.ToArray()));
        Assert.Equal(["Invalid parameter type for 'flat', expected: boolean"],
            await RepliesAsync(client, """{"execute": "query-named-block-nodes", "arguments": {"flat": null}}"""u8.ToArray()));
        Assert.Equal(["Invalid parameter type for 'writethrough', expected: boolean"],
            await RepliesAsync(client, """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "n", "writethrough": null}}"""u8.ToArray()));
        Assert.Empty(((JsonArray)(await client.ExecuteAsync("query-named-block-nodes"))!));
    }
}
