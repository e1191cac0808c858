using System.Text;
using System.Text.Json;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Tests;

public sealed class QmpInputTests
{
    /// <summary>Each message the input makes: the parsed value's JSON, or "error: " and the error.</summary>
    static List<string> Messages(params byte[][] pieces)
    {
        var streamer = new QmpJsonStreamer();
        var messages = new List<string>();
        foreach (var piece in pieces)
        {
            for (var used = 0; used < piece.Length;)
            {
                used += streamer.Feed(piece.AsSpan(used));
                while (streamer.TryTake(out var message))
                {
                    using (message.Document)
                    {
                        messages.Add(message.Document is { } document ? document.RootElement.GetRawText() : "error: " + message.Error);
                    }
                }
            }
        }

        return messages;
    }

    static List<string> Messages(params string[] pieces) => Messages([.. pieces.Select(Encoding.UTF8.GetBytes)]);

    [Fact]
    public void Values_split_across_reads_and_packed_in_one_read_both_come_out_whole()
    {
        var messages = Messages("{\"execute\": \"a\", \"x\": \"}{\\\"\"}{\"exe", "cute\": [1, {\"b\": 2}]}\r\n  {}");

        Assert.Equal(["{\"execute\":\"a\",\"x\":\"}{\\u0022\"}", "{\"execute\":[1,{\"b\":2}]}", "{}"], messages);
    }

    [Fact]
    public void Scalars_are_values_of_their_own_and_single_quotes_are_strings()
    {
        Assert.Equal(["123", "true", "{\"execute\":\"x\"}", "{\"a\":\"it\\u0027s \\u0022q\\u0022\"}"],
            Messages("123 true {'execute': 'x'}{'a': 'it\\'s \"q\"'}"));
    }

    [Fact]
    public void Numbers_are_read_as_qemu_reads_them()
    {
        Assert.Equal(["[0,-1,18446744073709551615,1.2345678901234569e+23,0.10000000000000001,1.5]"],
            Messages("[-0, -1, 18446744073709551615, 123456789012345678901234, 0.1, 1.50]"));
    }

    /// <summary>QEMU 7.2's replies to the same bytes (measured with qemu-storage-daemon).</summary>
    [Theory]
    [InlineData("{\"id\": \"\\udc00\"}", "JSON parse error, \\udc00 is not a valid Unicode character")]
    [InlineData("{\"id\": \"\\ud800x\"}", "JSON parse error, \\ud800 is not a valid Unicode character")]
    [InlineData("{\"id\": \"\\ufdd0\"}", "JSON parse error, \\ufdd0 is not a valid Unicode character")]
    [InlineData("{\"id\": \"\\u12\"}", "JSON parse error, \\u12\" is not a valid Unicode character")]
    [InlineData("{\"id\": \"\\x\"}", "JSON parse error, invalid escape sequence in string")]
    [InlineData("{\"a\": 1, \"a\": 2}", "JSON parse error, duplicate key")]
    [InlineData("{\"a\" 1}", "JSON parse error, missing : in object pair")]
    [InlineData("{1: 2}", "JSON parse error, key is not a string in object")]
    [InlineData("[1 2]", "JSON parse error, expected separator in list")]
    [InlineData("{\"a\": 1 \"b\": 2}", "JSON parse error, expected separator in dict")]
    [InlineData("{\"a\": }", "JSON parse error, expecting value")]
    [InlineData("[tru]", "JSON parse error, invalid keyword 'tru'")]
    [InlineData("]", "JSON parse error, expecting value")]
    [InlineData("[}", "JSON parse error, expecting value")]
    [InlineData("@", "JSON parse error, stray '@'")]
    public void Bad_json_gets_qemus_error(string input, string error) =>
        Assert.Equal(["error: " + error], Messages(input + "\n"));

    [Fact]
    public void Invalid_utf8_is_refused_and_the_stream_goes_on_as_qemus_does()
    {
        // A byte the lexer cannot take (0xFF) ends the message as a stray token; the rest up to a
        // structural character is skipped, and the '}' left over is a message of its own.
        Assert.Equal(["error: JSON parse error, stray '\"a\uFFFD'", "error: JSON parse error, expecting value", "{\"ok\":1}"],
            Messages([.. "{\"id\": \"a"u8, 0xFF, .. "\"}{\"ok\": 1}"u8]));
        // Bytes the lexer takes but that are not UTF-8 (a truncated sequence, an encoded surrogate).
        Assert.Equal(["error: JSON parse error, invalid UTF-8 sequence in string", "error: JSON parse error, invalid UTF-8 sequence in string"],
            Messages([.. "{\"id\": \"a"u8, 0xC3, .. "\"}{\"id\": \""u8, 0xED, 0xB0, 0x80, .. "\"}"u8]));
        // QEMU's modified UTF-8 takes C0 80 for U+0000.
        Assert.Equal(["{\"id\":\"a\\u0000\"}"], Messages([.. "{\"id\": \"a"u8, 0xC0, 0x80, .. "\"}"u8]));
    }

    [Fact]
    public void A_10_MB_string_is_accepted_and_a_message_over_64_MiB_is_refused_without_being_kept()
    {
        var big = new string('x', 10_000_000);
        var accepted = Messages("{\"id\": \"" + big + "\"}");
        Assert.Equal(10_000_000 + 9, Assert.Single(accepted).Length);

        var streamer = new QmpJsonStreamer();
        streamer.Feed("{\"pad\": \""u8);
        var chunk = new byte[1 << 20];
        chunk.AsSpan().Fill((byte)'y');
        // Two strings, each within the limit (a longer token QEMU's lexer cuts), together over it.
        for (var i = 0; i < QmpJsonStreamer.MaxMessageBytes / chunk.Length + 2; i++)
        {
            if (i == QmpJsonStreamer.MaxMessageBytes / chunk.Length - 1)
            {
                streamer.Feed("\", \"b\": \""u8);
            }

            Assert.Equal(chunk.Length, streamer.Feed(chunk));
            Assert.False(streamer.TryTake(out _));
        }

        var tail = "\"}{\"ok\": 1}"u8.ToArray();
        var messages = new List<string>();
        for (var used = 0; used < tail.Length;)
        {
            used += streamer.Feed(tail.AsSpan(used));
            while (streamer.TryTake(out var message))
            {
                messages.Add(message.Document?.RootElement.GetRawText() ?? "error: " + message.Error);
            }
        }

        // As QEMU: the string token is refused when it ends; the '}' after it closes nothing.
        Assert.Equal(["error: JSON token size limit exceeded", "error: JSON parse error, expecting value", "{\"ok\":1}"], messages);
    }

    [Fact]
    public void A_token_over_64_MiB_is_cut_where_qemus_lexer_cuts_it()
    {
        // The string is refused once it passes the limit; QEMU's lexer then starts afresh inside it, so the
        // rest of its letters make a keyword, refused with the error QEMU cuts to 1,024 bytes, and the
        // closing quote opens a string that the line end makes a stray token.
        var streamer = new QmpJsonStreamer();
        var messages = new List<string>();
        var chunk = new byte[1 << 20];
        chunk.AsSpan().Fill((byte)'x');
        byte[][] pieces = ["{\"pad\": \""u8.ToArray(), .. Enumerable.Repeat(chunk, 65), "\"}\n{}"u8.ToArray()];
        foreach (var piece in pieces)
        {
            for (var used = 0; used < piece.Length;)
            {
                used += streamer.Feed(piece.AsSpan(used));
                while (streamer.TryTake(out var message))
                {
                    messages.Add(message.Document?.RootElement.GetRawText() ?? "error: " + message.Error);
                }
            }
        }

        Assert.Equal(4, messages.Count);
        Assert.Equal("error: JSON token size limit exceeded", messages[0]);
        Assert.Equal("error: JSON parse error, invalid keyword '" + new string('x', 1023 - "invalid keyword '".Length), messages[1]);
        Assert.Equal("error: JSON parse error, stray '\"}\n'", messages[2]);
        Assert.Equal("{}", messages[3]);
    }

    [Fact]
    public void Nesting_deeper_than_qemus_limit_is_refused()
    {
        var ok = new string('[', QmpJsonStreamer.MaxNesting) + new string(']', QmpJsonStreamer.MaxNesting);
        Assert.Equal(ok, Assert.Single(Messages(ok)));

        var deep = Messages(new string('[', QmpJsonStreamer.MaxNesting + 1) + "\n");
        Assert.Equal(["error: JSON nesting depth limit exceeded"], deep);
    }

    [Fact]
    public void Keyval_nests_dotted_keys_and_keeps_doubled_commas()
    {
        var element = KeyVal.Parse("driver=qcow2,node-name=disk,file.driver=file,file.filename=a,,b.qcow2");

        Assert.Equal("""{"driver":"qcow2","node-name":"disk","file":{"driver":"file","filename":"a,b.qcow2"}}""", element.GetRawText());
        Assert.Equal("""{"chardev":"mon0"}""", KeyVal.Parse("mon0", impliedKey: "chardev").GetRawText());
        Assert.Throws<FormatException>(() => KeyVal.Parse("a=1,a=2"));
        Assert.Throws<FormatException>(() => KeyVal.Parse("a=1,a.b=2"));
        Assert.Throws<FormatException>(() => KeyVal.Parse("novalue"));
    }

    [Fact]
    public void Keyval_arguments_convert_numbers_and_switches()
    {
        var arguments = new QmpArguments(KeyVal.Parse("size=1G,count=12,hex=0x10,octal=010,neg=-3,writable=on,ro=off,bad=maybe"), keyval: true);

        // An int as strtoll reads it in base 0, as QEMU's keyval visitor does: no size suffix.
        Assert.Equal("Parameter 'size' expects integer", Assert.Throws<QmpException>(() => arguments.OptionalInt("size")).Message);
        Assert.Equal(12, arguments.OptionalInt("count"));
        Assert.Equal(16, arguments.OptionalInt("hex"));
        Assert.Equal(8, arguments.OptionalInt("octal"));
        Assert.Equal(-3, arguments.OptionalInt("neg"));
        Assert.True(arguments.OptionalBool("writable"));
        Assert.False(arguments.OptionalBool("ro"));
        Assert.Equal("Parameter 'bad' expects 'on' or 'off'", Assert.Throws<QmpException>(() => arguments.OptionalBool("bad")).Message);
    }

    [Fact]
    public void Uint32_arguments_are_read_as_qapi_reads_them()
    {
        using var document = JsonDocument.Parse("""{"a": 7, "b": "7", "c": null, "d": 1.5, "e": 4294967296, "f": -1, "g": 18446744073709551615}""");
        var arguments = new QmpArguments(document.RootElement);

        Assert.Equal(7u, arguments.OptionalUInt32("a"));
        Assert.Null(arguments.OptionalUInt32("absent"));
        foreach (var name in (string[])["b", "c", "d"])
        {
            Assert.Equal($"Parameter '{name}' expects uint64", Assert.Throws<QmpException>(() => arguments.OptionalUInt32(name)).Message);
        }

        // QEMU reads a negative number as its two's complement, which is then out of range.
        foreach (var name in (string[])["e", "f", "g"])
        {
            Assert.Equal($"Parameter '{name}' expects uint32_t", Assert.Throws<QmpException>(() => arguments.OptionalUInt32(name)).Message);
        }
    }

    [Fact]
    public void Json_null_is_a_wrong_type_except_where_null_is_allowed()
    {
        using var document = JsonDocument.Parse("""{"size": null, "name": null, "on": null, "file": null, "backing": null}""");
        var arguments = new QmpArguments(document.RootElement);

        Assert.Equal("Invalid parameter type for 'size', expected: integer", Assert.Throws<QmpException>(() => arguments.OptionalInt("size")).Message);
        Assert.Equal("Invalid parameter type for 'name', expected: string", Assert.Throws<QmpException>(() => arguments.OptionalString("name")).Message);
        Assert.Equal("Invalid parameter type for 'on', expected: boolean", Assert.Throws<QmpException>(() => arguments.OptionalBool("on")).Message);
        Assert.Equal("Invalid parameter type for 'file', expected: object", Assert.Throws<QmpException>(() => arguments.OptionalObject("file")).Message);
        Assert.True(arguments.IsExplicitNull("backing"));
    }

    [Fact]
    public void Json_arguments_are_checked_in_qapi_order_and_words()
    {
        using var document = JsonDocument.Parse("""{"speed": "1", "file": {"driver": "x", "extra": 1}}""");
        var arguments = new QmpArguments(document.RootElement);

        Assert.Equal("Invalid parameter type for 'speed', expected: integer", Assert.Throws<QmpException>(() => arguments.OptionalInt("speed")).Message);
        Assert.Equal("Parameter 'device' is missing", Assert.Throws<QmpException>(() => arguments.RequireString("device")).Message);
        var file = arguments.OptionalObject("file")!;
        file.RequireString("driver");
        Assert.Equal("Parameter 'file.extra' is unexpected", Assert.Throws<QmpException>(file.CheckNoneUnexpected).Message);
    }
}
