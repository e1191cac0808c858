using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Tests;

/// <summary>The pieces of qemu-img's output format, checked against values qemu-img 7.2 printed.</summary>
public sealed class QemuFormatTests
{
    [Theory]
    [InlineData(0L, "0 B")]
    [InlineData(512L, "512 B")]
    [InlineData(999L, "999 B")]
    [InlineData(1000L, "0.977 KiB")]
    [InlineData(1536L, "1.5 KiB")]
    [InlineData(4096L, "4 KiB")]
    [InlineData(200704L, "196 KiB")]
    [InlineData(331776L, "324 KiB")]
    [InlineData(1023488L, "1e+03 KiB")]
    [InlineData(1126400L, "1.07 MiB")]
    [InlineData(1179648L, "1.12 MiB")]
    [InlineData(3407872L, "3.25 MiB")]
    [InlineData(4194304L, "4 MiB")]
    [InlineData(6291456L, "6 MiB")]
    [InlineData(1073741824L, "1 GiB")]
    [InlineData(1076887552L, "1 GiB")]
    [InlineData(109951162777600L, "100 TiB")]
    public void Sizes_read_as_qemu_s_size_to_str(long bytes, string expected) =>
        Assert.Equal(expected, QemuText.SizeToString(bytes));

    [Theory]
    [InlineData(0L, "0               ")]
    [InlineData(0x10000L, "0x10000         ")]
    [InlineData(0x123456789abcL, "0x123456789abc  ")]
    public void Map_columns_are_hash_flagged_hex(long value, string expected) =>
        Assert.Equal(expected, QemuText.HexColumn(value));

    [Fact]
    public void Json_keys_come_in_qdict_bucket_order()
    {
        // The order qemu-img 7.2 prints for an overlay's info and for a check with every optional member.
        var info = new QemuJson();
        foreach (var key in new[] { "filename", "format", "dirty-flag", "actual-size", "virtual-size", "cluster-size", "backing-filename",
            "full-backing-filename", "backing-filename-format", "format-specific" })
        {
            info.Add(key, 1L);
        }

        Assert.Equal(["backing-filename-format", "virtual-size", "filename", "cluster-size", "format", "actual-size", "format-specific",
            "full-backing-filename", "backing-filename", "dirty-flag"], Keys(info.ToPrettyString()));

        var check = new QemuJson();
        foreach (var key in new[] { "filename", "format", "check-errors", "image-end-offset", "corruptions", "leaks", "corruptions-fixed",
            "leaks-fixed", "total-clusters", "allocated-clusters", "fragmented-clusters", "compressed-clusters" })
        {
            check.Add(key, 1L);
        }

        Assert.Equal(["image-end-offset", "compressed-clusters", "total-clusters", "corruptions", "corruptions-fixed", "check-errors", "leaks",
            "leaks-fixed", "allocated-clusters", "filename", "format", "fragmented-clusters"], Keys(check.ToPrettyString()));
    }

    static string[] Keys(string json) =>
        [.. json.Split('\n').Where(l => l.StartsWith("    \"", StringComparison.Ordinal)).Select(l => l.Trim().Split('"')[1])];

    [Fact]
    public void Json_strings_escape_as_qemu_does()
    {
        var text = new System.Text.StringBuilder();
        QemuJson.AppendString(text, "w\u00e9\"i\\rd\tx\u0001.qcow2");
        Assert.Equal("\"w\\u00E9\\\"i\\\\rd\\tx\\u0001.qcow2\"", text.ToString());
    }

    [Fact]
    public void Pretty_json_is_laid_out_as_qemu_lays_it_out()
    {
        var json = new QemuJson().Add("type", "qcow2").Add("data", new QemuJson().Add("compat", "1.1").Add("corrupt", false));
        Assert.Equal("{\n    \"type\": \"qcow2\",\n    \"data\": {\n        \"compat\": \"1.1\",\n        \"corrupt\": false\n    }\n}", json.ToPrettyString());
        Assert.Equal("[\n    {\n        \"type\": \"x\"\n    },\n    {\n        \"type\": \"y\"\n    }\n]",
            QemuJson.ToPrettyArray([new QemuJson().Add("type", "x"), new QemuJson().Add("type", "y")]));
    }
}
