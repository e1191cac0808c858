using BlockMirror.Cli.Commands;
using BlockMirror.Cli.Logging;
using BlockMirror.TestKit;
using Microsoft.Extensions.Logging;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// serve's <c>-T</c>/<c>--trace</c> over our event names: QEMU's glob patterns, its option syntax, the events file,
/// and how a traced event gets past <c>--log-level</c>. In process.
/// </summary>
public sealed class TraceOptionTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-trace-");

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData("nbd_*", "nbd_client_dropped", true)]
    [InlineData("nbd_*", "job_failed", false)]
    [InlineData("*", "job_failed", true)]
    [InlineData("*_dropped", "nbd_client_dropped", true)]
    [InlineData("nbd_*_dropped", "nbd_client_dropped", true)]
    [InlineData("nbd_client_?ropped", "nbd_client_dropped", true)]
    [InlineData("nbd_client_dropped", "nbd_client_dropped", true)]
    [InlineData("nbd_client_drop", "nbd_client_dropped", false)]
    [InlineData("*a*b*", "xaxxb", true)]
    [InlineData("*a*b*", "xbxxa", false)]
    [InlineData("", "", true)]
    [InlineData("", "x", false)]
    public void Patterns_match_as_qemus_globs(string pattern, string name, bool matches) =>
        Assert.Equal(matches, TracePattern.Matches(pattern, name));

    /// <summary>The catalogue the patterns match is read from the [LoggerMessage] declarations: every id and name once.</summary>
    [Fact]
    public void Every_event_has_a_unique_id_and_a_unique_snake_case_name()
    {
        var events = LogEvents.All;
        Assert.True(events.Count >= 30, $"{events.Count} events");
        Assert.Equal(events.Count, events.Select(e => e.Id).Distinct().Count());
        Assert.Equal(events.Count, events.Select(e => e.Name).Distinct().Count());
        Assert.All(events, e => Assert.Matches("^[a-z]+(_[a-z]+)+$", e.Name));
        Assert.Contains(events, e => e.Name == "nbd_request_refused" && e.Level == LogLevel.Debug);
        Assert.Contains(events, e => e.Name == "job_state_change");
        Assert.Contains(events, e => e.Name == "graph_node_added");
        Assert.Contains(events, e => e.Name == "qmp_client_connected");
    }

    [Fact]
    public void Options_apply_in_order_and_a_leading_minus_turns_events_off_again()
    {
        var warnings = new StringWriter();
        var trace = new TraceSettings(warnings);
        trace.Apply("nbd_client_*", "--trace nbd_client_*");
        trace.Apply("enable=-nbd_client_connected", "-T enable=-nbd_client_connected");
        trace.Apply("job_failed", "--trace=job_failed");

        Assert.Equal(["job_failed", "nbd_client_disconnected", "nbd_client_dropped", "nbd_client_export", "nbd_client_refused"], trace.EnabledEvents().Order());
        Assert.Equal("", warnings.ToString());
    }

    [Fact]
    public void An_events_file_holds_one_pattern_per_line_with_comments_and_blank_lines_and_its_unknown_names_are_warned_with_their_line()
    {
        var file = _dir.File("events");
        File.WriteAllText(file, "# what to trace\njob_*\n\nno_such_event\n-job_ready\n");
        var warnings = new StringWriter();
        var trace = new TraceSettings(warnings);
        trace.Apply($"events={file}", $"--trace events={file}");

        Assert.Contains("job_failed", trace.EnabledEvents());
        Assert.DoesNotContain("job_ready", trace.EnabledEvents());
        Assert.Equal($"blockmirror serve:{file}:4: warning: trace event 'no_such_event' does not exist\n", warnings.ToString());
    }

    [Theory]
    [InlineData("bogus=1", "--trace bogus=1: Invalid parameter 'bogus'")]
    [InlineData("a,b", "--trace a,b: Invalid parameter 'b'")]
    [InlineData("events=/nonexistent/x", "/nonexistent/x: No such file or directory")]
    public void A_bad_option_is_one_clear_error(string value, string message)
    {
        var trace = new TraceSettings(new StringWriter());
        var error = Assert.Throws<UsageException>(() => trace.Apply(value, $"--trace {value}"));
        Assert.Equal(message, error.Message);
    }

    [Fact]
    public void A_repeated_key_keeps_its_last_value_and_a_double_comma_is_a_comma()
    {
        var trace = new TraceSettings(new StringWriter());
        trace.Apply("enable=nbd_client_dropped,enable=job_failed,file=a,,b", "--trace x");

        Assert.Equal(["job_failed"], trace.EnabledEvents());
        Assert.Equal("a,b", trace.File);
    }

    [Fact]
    public void A_traced_event_is_written_below_the_log_level_and_other_events_are_not()
    {
        var sink = new LogCollector();
        var factory = new TracingLoggerFactory(sink, LogLevel.Warning, ["nbd_request_refused"]);
        var logger = factory.CreateLogger("x");

        logger.Log(LogLevel.Debug, new EventId(321, "nbd_request_refused"), "refused", null, (s, _) => s);
        logger.Log(LogLevel.Debug, new EventId(320, "nbd_option_refused"), "option", null, (s, _) => s);
        logger.Log(LogLevel.Warning, new EventId(314, "nbd_client_dropped"), "dropped", null, (s, _) => s);

        Assert.Equal(["refused", "dropped"], sink.Records.Select(r => r.Message));
    }

    [Theory]
    [InlineData("2049:12345", 2049UL, 12345UL, true)]
    [InlineData("2049:12345", 2049UL, 12346UL, false)]
    [InlineData("2049:12345:1", 2049UL, 12345UL, false)]
    [InlineData("x:12345", 2049UL, 12345UL, false)]
    [InlineData("", 2049UL, 12345UL, false)]
    public void Journal_stream_must_name_stderrs_device_and_inode(string value, ulong device, ulong inode, bool matches) =>
        Assert.Equal(matches, JournalStream.Matches(value, (device, inode)));

    [Fact]
    public void A_log_line_is_one_line_whatever_the_message_holds()
    {
        var plain = new StringWriter();
        LogLine.Write(plain, LogLevel.Warning, new EventId(312, "nbd_client_refused"), "export 'a\nb'", null, journal: false);
        Assert.Matches(@"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z warning nbd_client_refused: export 'a\\x0ab'\n$", plain.ToString());

        var journal = new StringWriter();
        LogLine.Write(journal, LogLevel.Error, new EventId(205, "job_failed"), "failed", new IOException("disk\rgone"), journal: true);
        Assert.Equal("<3>job_failed: failed: disk\\x0dgone\n", journal.ToString());
    }
}
