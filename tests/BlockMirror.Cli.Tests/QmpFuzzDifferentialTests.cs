using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Seeded mutations of valid commands (a member's type swapped, nulls, duplicate keys, bad UTF-8, lone
/// surrogates, truncation, deep nesting, unknown and missing members) sent to qemu-storage-daemon 7.2 and to
/// <c>blockmirror serve</c>: every input gets the same replies, compared by outcome (return, or error class
/// and text). The few deliberate differences are listed in <see cref="Pinned"/>, each with its reason.
/// </summary>
public sealed class QmpFuzzDifferentialTests : IDisposable
{
    const int Inputs = 300;

    readonly TempDirectory _dir = new("blockmirror-qmp-fuzz-diff-");

    public void Dispose() => _dir.Dispose();

    /// <summary>Commands valid as they are (each answers the same on both daemons), to mutate.</summary>
    static readonly string[] Corpus =
    [
        """{"execute": "query-version"}""",
        """{"execute": "query-named-block-nodes", "arguments": {"flat": true}}""",
        """{"execute": "query-block-jobs"}""",
        """{"execute": "query-block-exports"}""",
        """{"execute": "blockdev-del", "arguments": {"node-name": "nothing"}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "exp0", "node-name": "disk", "writable": false, "writethrough": true, "name": "x", "description": "d", "fixed-iothread": false, "bitmaps": [], "allocation-depth": false}}""",
        """{"execute": "block-export-del", "arguments": {"id": "nothing", "mode": "safe"}}""",
        """{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/nonexistent/x.sock"}}}}""",
        """{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "n1", "file": {"driver": "file", "filename": "/nonexistent/x"}, "offset": 0, "read-only": true}}""",
        """{"execute": "blockdev-mirror", "arguments": {"job-id": "j", "device": "disk", "target": "nowhere", "sync": "full", "speed": 10, "granularity": 65536, "auto-finalize": true}}""",
        """{"execute": "job-dismiss", "arguments": {"id": "j"}}""",
        """{"execute": "qmp_capabilities"}""",
    ];

    static readonly string[] Replacements = ["null", "1", "-1", "\"s\"", "true", "[]", "{}", "1.5", "18446744073709551616", "[null]"];

    /// <summary>Inputs where the replies differ on purpose: the input, and why.</summary>
    static readonly Dictionary<string, string> Pinned = new(StringComparer.Ordinal)
    {
    };

    /// <summary>
    /// Inputs chosen by hand: bad UTF-8 and escapes followed by a command that must still be served, JSON
    /// null for typed members, duplicate keys, a 1.5 MB string, and the arguments that are refused by name
    /// rather than ignored (with the difference from QEMU's answer pinned in <see cref="PinnedByHand"/>).
    /// </summary>
    static readonly string[] ByHand =
    [
        "{\"execute\": \"query-version\", \"id\": \"\\udc00\"}{\"execute\": \"query-version\", \"id\": 1}",
        "{\"execute\": \"query-version\", \"id\": \"\\ud800\\udc00\"}",
        "{\"execute\": \"query-version\", \"id\": \"a\u00e9\"}",
        """{"execute": "query-named-block-nodes", "arguments": {"flat": null}}""",
        """{"execute": "query-named-block-nodes", "arguments": {"flat": "yes"}}""",
        """{"execute": "query-named-block-nodes", "arguments": {"flat": true, "flat": true}}""",
        """{"execute": "query-version", "execute": "query-version"}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": null}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "writethrough": null}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "writethrough": "on"}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "bitmaps": "b"}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "bitmaps": [1]}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "iothread": "io0"}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "name": "disk"}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "name": "e1", "bitmaps": ["b0"]}}""",
        """{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "disk", "name": "e1", "allocation-depth": true}}""",
        """{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n2", "size": null}}""",
        """{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n2", "read-only": null}}""",
        """{"execute": "blockdev-mirror", "arguments": {"device": "disk", "target": "disk", "sync": "full", "auto-finalize": null}}""",
        """{"execute": "blockdev-mirror", "arguments": {"device": "disk", "target": "disk", "sync": "full", "granularity": null}}""",
        """{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/nonexistent/x"}}, "max-connections": "x"}}""",
        """{"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/nonexistent/x"}}, "max-connections": 4294967296}}""",
        """{"execute": "qmp_capabilities", "arguments": {"enable": null}}""",
        """{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}""",
        """{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}""",
        """{"exec-oob": "query-version", "id": 7}""",
        // Over the 1 MiB this daemon once refused. (QEMU takes 10 MB too, in 100 s: QmpInputTests has that.)
        "{\"execute\": \"query-version\", \"id\": \"" + new string('x', 1_500_000) + "\"}",
        new string('[', 1025) + new string(']', 1025),
    ];

    /// <summary>Hand-picked inputs answered differently on purpose: the input, and why.</summary>
    static readonly Dictionary<string, string> PinnedByHand = new(StringComparer.Ordinal)
    {
    };

    [SkippableFact]
    public async Task Hostile_inputs_chosen_by_hand_get_the_answers_qemu_storage_daemon_gives()
    {
        var inputs = ByHand.Select(Encoding.UTF8.GetBytes).ToList();
        var theirs = await AnswersAsync(DifferentialDaemon.Qsd(), inputs);
        var ours = await AnswersAsync(DifferentialDaemon.Ours(), inputs);

        for (var i = 0; i < inputs.Count; i++)
        {
            if (PinnedByHand.ContainsKey(ByHand[i]))
            {
                Assert.NotEqual(theirs[i], ours[i]);
                Assert.StartsWith("GenericError: ", ours[i], StringComparison.Ordinal);
            }
            else
            {
                Assert.True(theirs[i] == ours[i], $"{ByHand[i][..Math.Min(200, ByHand[i].Length)]}\n  qsd:  {theirs[i]}\n  ours: {ours[i]}");
            }
        }

        // The bad escape did not end the session: the command after it was answered.
        Assert.Equal("GenericError: JSON parse error, \\udc00 is not a valid Unicode character | return | GenericError: JSON parse error, stray '\uFFFD'", ours[0]);
    }

    static byte[] Mutate(Random random)
    {
        var text = Corpus[random.Next(Corpus.Length)];
        var command = JsonNode.Parse(text)!.AsObject();
        var arguments = command["arguments"] as JsonObject;
        var keys = arguments?.Select(p => p.Key).ToList() ?? [];
        var key = keys.Count > 0 ? keys[random.Next(keys.Count)] : null;
        switch (random.Next(10))
        {
            case 0 or 1 when key is not null:
                // A member's type swapped (null included).
                var swapped = text.Replace($"\"{key}\": {arguments![key]!.ToJsonString()}", $"\"{key}\": {Replacements[random.Next(Replacements.Length)]}", StringComparison.Ordinal);
                return Encoding.UTF8.GetBytes(swapped);
            case 2 when key is not null:
                // A duplicate key.
                return Encoding.UTF8.GetBytes(text.Replace($"\"{key}\":", $"\"{key}\": {arguments![key]!.ToJsonString()}, \"{key}\":", StringComparison.Ordinal));
            case 3:
            {
                // Bad UTF-8 or a bad escape inside a string.
                byte[][] bad = [[0xFF], [0xC3], [0xED, 0xB0, 0x80], [0xC0, 0xAF], [0xF4, 0x90, 0x80, 0x80], "\\udc00"u8.ToArray(), "\\ud800x"u8.ToArray(), "\\uFFFF"u8.ToArray(), [0x01], "\\q"u8.ToArray()];
                var bytes = Encoding.UTF8.GetBytes(text);
                var quotes = Enumerable.Range(0, bytes.Length).Where(i => bytes[i] == (byte)'"').ToList();
                var at = quotes[random.Next(quotes.Count / 2) * 2] + 1;
                return [.. bytes[..at], .. bad[random.Next(bad.Length)], .. bytes[at..]];
            }

            case 4:
                // Truncated.
                return Encoding.UTF8.GetBytes(text[..random.Next(1, text.Length)]);
            case 5:
            {
                // Deep nesting, around QEMU's limit of 1024.
                int[] depths = [2, 100, 1022, 1023, 1024, 1500];
                var depth = depths[random.Next(depths.Length)];
                var value = new string('[', depth) + new string(']', depth);
                return Encoding.UTF8.GetBytes(key is null
                    ? text[..^1] + $", \"arguments\": {value}}}"
                    : text.Replace($"\"{key}\": {arguments![key]!.ToJsonString()}", $"\"{key}\": {value}", StringComparison.Ordinal));
            }

            case 6:
                // An unknown member, in the arguments or beside them.
                return Encoding.UTF8.GetBytes(key is null || random.Next(2) == 0 ? text[..^1] + ", \"bogus\": 1}" : text.Replace($"\"{key}\":", $"\"bogus\": 1, \"{key}\":", StringComparison.Ordinal));
            case 7 when key is not null:
            {
                // A member removed.
                arguments!.Remove(key);
                return Encoding.UTF8.GetBytes(command.ToJsonString());
            }

            case 8:
            {
                // Single quotes, as QEMU also takes them.
                return Encoding.UTF8.GetBytes(text.Replace('"', '\''));
            }

            default:
            {
                // A byte or two changed.
                var bytes = Encoding.UTF8.GetBytes(text);
                for (var i = random.Next(1, 3); i > 0; i--)
                {
                    const string Specials = "{}[]\",: 0a\\'-";
                    bytes[random.Next(bytes.Length)] = (byte)Specials[random.Next(Specials.Length)];
                }

                return bytes;
            }
        }
    }

    [SkippableFact]
    public async Task Mutated_commands_get_the_answers_qemu_storage_daemon_gives()
    {
        var inputs = Enumerable.Range(0, Inputs).Select(seed => Mutate(new Random(seed))).ToList();
        var theirs = await AnswersAsync(DifferentialDaemon.Qsd(), inputs);
        var ours = await AnswersAsync(DifferentialDaemon.Ours(), inputs);

        var differences = new List<string>();
        for (var i = 0; i < inputs.Count; i++)
        {
            var input = Encoding.UTF8.GetString(inputs[i]);
            if (Pinned.ContainsKey(input))
            {
                Assert.NotEqual(theirs[i], ours[i]);
                continue;
            }

            if (theirs[i] != ours[i])
            {
                differences.Add($"{input}\n  qsd:  {theirs[i]}\n  ours: {ours[i]}");
            }
        }

        Assert.True(differences.Count == 0, $"{differences.Count} of {inputs.Count} differ:\n" + string.Join("\n", differences));
    }

    /// <summary>Each input's replies, one line: "return" or "CLASS: desc" for each, in order.</summary>
    async Task<List<string>> AnswersAsync(DifferentialDaemon daemon, List<byte[]> inputs)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var answers = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk,size=1048576"], "disk", async (qmp, _) =>
        {
            foreach (var input in inputs)
            {
                // 0xFF ends whatever the input left open (QEMU's documented way to resynchronise), then a
                // command with a known id marks the end of this input's replies.
                await qmp.SendRawAsync((byte[])[.. input, (byte)'\n', 0xFF, .. "\n{\"execute\": \"query-version\", \"id\": \"sync\"}\n"u8]);
                var replies = new List<string>();
                while (true)
                {
                    var reply = await qmp.ReadObjectAsync(TimeSpan.FromSeconds(30));
                    if (reply.ContainsKey("event"))
                    {
                        continue;
                    }

                    if (reply["id"] is JsonValue id && id.TryGetValue<string>(out var marker) && marker == "sync")
                    {
                        break;
                    }

                    replies.Add(reply["error"] is { } error ? $"{(string?)error["class"]}: {(string?)error["desc"]}" : "return");
                }

                answers.Add(string.Join(" | ", replies));
            }
        });
        return answers;
    }
}
