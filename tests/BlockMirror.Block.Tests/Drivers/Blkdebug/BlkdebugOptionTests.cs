using System.Text.Json;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// blkdebug's rules as QEMU 7.2 takes them: inline <c>inject-error</c>/<c>set-state</c> lists (JSON or
/// key=value) and the <c>config</c> file, with qemu-storage-daemon's messages for the mistakes (each message
/// below was taken from qemu-storage-daemon 7.2 given the same options).
/// </summary>
public sealed class BlkdebugOptionTests : IDisposable
{
    readonly TempDirectory _dir = new("bm-blkdebug-options-");

    public void Dispose() => _dir.Dispose();

    const string Image = """{"driver": "null-co", "size": 1048576, "read-zeroes": true}""";

    static async Task<BlkdebugFilter> OpenAsync(BlockGraph graph, string json, bool keyval = false)
    {
        using var document = JsonDocument.Parse(json);
        var node = await DriverRegistry.OpenAsync(graph, new OptionReader(document.RootElement, keyval: keyval), OpenRules.BlockdevAdd);
        return (BlkdebugFilter)node.Driver;
    }

    static async Task<string> RefusalAsync(string json, bool keyval = false)
    {
        await using var graph = new BlockGraph();
        var refused = await Assert.ThrowsAnyAsync<Exception>(async () => await OpenAsync(graph, json, keyval));
        Assert.Empty(graph.Nodes);
        return refused.Message;
    }

    string Config(string text)
    {
        var path = _dir.File($"rules{Guid.NewGuid():N}.cfg");
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    string WithConfig(string path) => $$"""{"driver": "blkdebug", "node-name": "dbg", "config": {{JsonSerializer.Serialize(path)}}, "image": {{Image}}}""";

    [Fact]
    public async Task A_config_file_gives_the_same_rules_as_the_inline_options_and_comes_first()
    {
        var path = Config("""
            # Comments and empty lines are skipped.

            [set-state]
            event = "flush_to_disk"
            state = "1"
            new_state = "2"

            [inject-error "first"]
              event = "write_aio"
              errno = "0x1c"
              sector = "010"
              once = "on"
              immediately = "y"
              iotype = "write"
              state = "2"
            [inject-error]
            event = "read_aio"
            event = "l2_load"
            """);
        await using var graph = new BlockGraph();
        var filter = await OpenAsync(graph, $$"""
            {"driver": "blkdebug", "node-name": "dbg", "config": {{JsonSerializer.Serialize(path)}}, "image": {{Image}},
             "inject-error": [{"event": "pwritev", "sector": 3}], "set-state": [{"event": "pwritev", "new_state": 9}]}
            """);

        filter.OnEvent(BlkdebugEvent.FlushToDisk);
        Assert.Equal(2, filter.State);
        filter.OnEvent(BlkdebugEvent.WriteAio);
        Assert.Equal(
            new BlkdebugInjectError(BlkdebugEvent.WriteAio, 2, 1 << (int)BlockOperation.Write, (int)BlockErrno.ENOSPC, 8 * 512, Once: true, Immediately: true),
            Assert.Single(filter.ArmedRules));
        // A key given twice keeps its last value.
        filter.OnEvent(BlkdebugEvent.L2Load);
        Assert.Equal(new BlkdebugInjectError(BlkdebugEvent.L2Load), Assert.Single(filter.ArmedRules));
        filter.OnEvent(BlkdebugEvent.ReadAio);
        Assert.Equal(BlkdebugEvent.L2Load, Assert.Single(filter.ArmedRules).Event);

        filter.OnEvent(BlkdebugEvent.Pwritev);
        Assert.Equal(new BlkdebugInjectError(BlkdebugEvent.Pwritev, Offset: 3 * 512), Assert.Single(filter.ArmedRules));
        Assert.Equal(9, filter.State);
    }

    [Fact]
    public async Task Command_line_lists_are_read_as_qemus_keyval_lists()
    {
        await using var graph = new BlockGraph();
        var filter = await OpenAsync(graph, """
            {"driver": "blkdebug", "node-name": "dbg", "image": {"driver": "null-co"},
             "inject-error": {"0": {"event": "read_aio", "errno": "28", "once": "on"}, "1": {"event": "write_aio", "iotype": "flush"}},
             "set-state": {"0": {"event": "read_aio", "state": "1", "new_state": "3"}}}
            """, keyval: true);

        filter.OnEvent(BlkdebugEvent.ReadAio);
        Assert.Equal(3, filter.State);
        Assert.Equal(new BlkdebugInjectError(BlkdebugEvent.ReadAio, Errno: 28, Once: true), Assert.Single(filter.ArmedRules));
        filter.OnEvent(BlkdebugEvent.WriteAio);
        Assert.Equal(1 << (int)BlockOperation.Flush, Assert.Single(filter.ArmedRules).IoTypes);
    }

    [Theory]
    [InlineData("[inject-error]\nevent = \"nope\"\n", "invalid parameter value: nope")]
    [InlineData("[inject-error]\nevent = \"read_aio\"\nerrno = \"abc\"\n", "Parameter 'errno' expects a number")]
    [InlineData("[inject-error]\nevent = \"read_aio\"\nerrno = \"99999999999999999999\"\n", "Value '99999999999999999999' is too large for parameter 'errno'")]
    [InlineData("[bogus]\nevent = \"read_aio\"\n", "There is no option group 'bogus'")]
    [InlineData("[inject-error]\nevent = \"read_aio\"\nfoo = \"1\"\n", "Invalid parameter 'foo'")]
    [InlineData("[inject-error]\nevent = \"read_aio\"\nonce=\"on\"\n", "Invalid parameter 'once=\"on\"'")]
    [InlineData("[set-state]\nevent = \"read_aio\"\nerrno = \"5\"\n", "Invalid parameter 'errno'")]
    [InlineData("[inject-error]\nstate = \"1\"\n", "Missing event name for rule")]
    [InlineData("event = \"read_aio\"\n", "no group defined")]
    [InlineData("[inject-error]\n   \n", "parse error")]
    [InlineData("[inject-error]\nevent read_aio\n", "invalid parameter value: ")]
    [InlineData("[inject-error]\nevent = \"read_aio\"\nonce = \"maybe\"\n", "Parameter 'once' expects 'on' or 'off'")]
    [InlineData("[inject-error]\nevent = \"read_aio\"\niotype = \"truncate\"\n", "invalid parameter value: truncate")]
    [InlineData("[set-state]\nevent = \"read_aio\"\nnew_state = \"x\"\n", "Parameter 'new_state' expects a number")]
    [InlineData("[inject-error \"x\"]\nevent = \"read_aio\"\n[inject-error \"x\"]\nevent = \"read_aio\"\n", "Duplicate ID 'x' for inject-error")]
    // A section's keys are checked when it ends; the names of events only once every section is read.
    [InlineData("[inject-error]\nevent = \"nope\"\n[set-state]\nfoo = \"1\"\n", "Invalid parameter 'foo'")]
    public async Task Config_file_mistakes_are_refused_in_qemus_words_without_the_files_name(string text, string message)
    {
        Assert.Equal(message, await RefusalAsync(WithConfig(Config(text))));
    }

    [Fact]
    public async Task A_config_file_that_cannot_be_read_is_refused_with_the_reason()
    {
        Assert.Equal("Could not read blkdebug config file: No such file or directory", await RefusalAsync(WithConfig(_dir.File("missing.cfg"))));
        Assert.Equal("Cannot read config file: Is a directory", await RefusalAsync(WithConfig(_dir.Path)));
    }

    [Theory]
    [InlineData("""{"inject-error": [{"event": "nope"}]}""", false, "Parameter 'event' does not accept value 'nope'")]
    [InlineData("""{"inject-error": [{"event": "read_aio", "iotype": "foo"}]}""", false, "Parameter 'iotype' does not accept value 'foo'")]
    [InlineData("""{"inject-error": [{"state": 1}]}""", false, "Parameter 'inject-error[0].event' is missing")]
    [InlineData("""{"set-state": [{"event": "read_aio"}]}""", false, "Parameter 'set-state[0].new_state' is missing")]
    [InlineData("""{"inject-error": [{"event": "read_aio", "foo": 1}]}""", false, "Parameter 'inject-error[0].foo' is unexpected")]
    [InlineData("""{"inject-error": {"event": "read_aio"}}""", false, "Invalid parameter type for 'inject-error', expected: array")]
    [InlineData("""{"inject-error": {"0": {"state": "1"}}}""", true, "Parameter 'inject-error.0.event' is missing")]
    [InlineData("""{"inject-error": {"0": {"event": "read_aio", "errno": "x"}}}""", true, "Parameter 'inject-error.0.errno' expects integer")]
    [InlineData("""{"set-state": {"0": {"event": "read_aio"}}}""", true, "Parameter 'set-state.0.new_state' is missing")]
    [InlineData("""{"inject-error": {"0": {"event": "nope"}}}""", true, "Parameter 'event' does not accept value 'nope'")]
    [InlineData("""{"inject-error": {"x": {"event": "read_aio"}}}""", true, "Invalid parameter type for 'inject-error', expected: array")]
    [InlineData("""{"inject-error": {"0": {"event": "read_aio"}, "2": {"event": "read_aio"}}}""", true, "Parameter 'inject-error.1' missing")]
    [InlineData("""{"inject-error": "foo"}""", true, "Invalid parameter type for 'inject-error', expected: array")]
    public async Task Inline_rule_mistakes_are_refused_in_qemus_words(string rules, bool keyval, string message)
    {
        using var document = JsonDocument.Parse(rules);
        var members = string.Concat(document.RootElement.EnumerateObject().Select(p => $", {p}"));
        var image = keyval ? """{"driver": "null-co"}""" : Image;

        Assert.Equal(message, await RefusalAsync($$"""{"driver": "blkdebug", "node-name": "dbg", "image": {{image}}{{members}}}""", keyval));
    }

    [Fact]
    public async Task Inline_rules_are_checked_before_the_config_file_is_read()
    {
        Assert.Equal("Parameter 'event' does not accept value 'nope2'", await RefusalAsync($$"""
            {"driver": "blkdebug", "node-name": "dbg", "config": "/nonexistent/x.cfg", "image": {{Image}}, "inject-error": [{"event": "nope2"}]}
            """));
    }
}
