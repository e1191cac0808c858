using System.Text;
using System.Text.Json;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Tests;

public sealed class QmpInputTests
{
    static List<QmpInputSplitter.Message> Split(params string[] pieces)
    {
        var splitter = new QmpInputSplitter();
        var messages = new List<QmpInputSplitter.Message>();
        foreach (var piece in pieces)
        {
            splitter.Feed(Encoding.UTF8.GetBytes(piece), messages.Add);
        }

        return messages;
    }

    [Fact]
    public void Values_split_across_reads_and_packed_in_one_read_both_come_out_whole()
    {
        var messages = Split("{\"execute\": \"a\", \"x\": \"}{\\\"\"}{\"exe", "cute\": [1, {\"b\": 2}]}\r\n  {}");

        Assert.Equal(["{\"execute\": \"a\", \"x\": \"}{\\\"\"}", "{\"execute\": [1, {\"b\": 2}]}", "{}"],
            messages.Select(m => Encoding.UTF8.GetString(m.Json!)));
    }

    [Fact]
    public void A_bare_value_is_one_error_and_the_next_object_still_parses()
    {
        var messages = Split("123 true {\"execute\": \"x\"}");

        Assert.Equal(["QMP input must be a JSON object", "QMP input must be a JSON object", null], messages.Select(m => m.Error));
        Assert.Equal("{\"execute\": \"x\"}", Encoding.UTF8.GetString(messages[2].Json!));
    }

    [Fact]
    public void An_oversized_value_is_followed_to_its_end_without_being_kept()
    {
        var splitter = new QmpInputSplitter();
        var messages = new List<QmpInputSplitter.Message>();
        splitter.Feed("{\"pad\": \""u8, messages.Add);
        var chunk = Encoding.ASCII.GetBytes(new string('}', 1 << 16));
        for (var i = 0; i < 40; i++)
        {
            splitter.Feed(chunk, messages.Add);
        }

        splitter.Feed("\"}{\"ok\": 1}"u8, messages.Add);

        Assert.Equal(2, messages.Count);
        Assert.StartsWith("JSON message too large", messages[0].Error, StringComparison.Ordinal);
        Assert.Equal("{\"ok\": 1}", Encoding.UTF8.GetString(messages[1].Json!));
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
    public void Keyval_arguments_convert_numbers_sizes_and_switches()
    {
        var arguments = new QmpArguments(KeyVal.Parse("size=1G,count=12,writable=on,ro=off,bad=maybe"), keyval: true);

        Assert.Equal(1L << 30, arguments.OptionalInt("size"));
        Assert.Equal(12, arguments.OptionalInt("count"));
        Assert.True(arguments.OptionalBool("writable"));
        Assert.False(arguments.OptionalBool("ro"));
        Assert.Equal("Parameter 'bad' expects 'on' or 'off'", Assert.Throws<QmpException>(() => arguments.OptionalBool("bad")).Message);
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
