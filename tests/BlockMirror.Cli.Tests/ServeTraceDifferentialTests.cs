using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>-T</c>/<c>--trace</c> as qemu-storage-daemon 7.2 reads it: the same value, followed by an option both refuse
/// (so both exit), gives the same warnings, errors and exit code from both. The names are ones neither knows, or
/// patterns: the two have different events (ours are listed by <c>--trace help</c>).
/// </summary>
public sealed class ServeTraceDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-trace-diff-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string[]> Values => new()
    {
        { ["--trace", "no_such_event"] },
        { ["--trace", "enable=no_such_event"] },
        { ["--trace", "enable="] },
        { ["--trace", "-no_such_event"] },
        { ["--trace", "nbd_*"] },
        { ["--trace", "no_such_*"] },
        { ["--trace", "enable=x_one,enable=x_two"] },
        { ["--trace", "bogus=1"] },
        { ["--trace", "a,b"] },
        { ["--trace", "a,nob"] },
        { ["--trace", "file="] },
        { ["--trace", "events=/nonexistent/events"] },
        { ["--trace", "events=EVENTS"] },
        { ["--trace", "events=/nonexistent/one,events=EVENTS"] },
        { ["--trace=no_such_event"] },
        { ["-T", "no_such_event"] },
        { ["-Tno_such_event"] },
        { ["--trace", "x_one", "--trace", "x_two"] },
    };

    [SkippableTheory]
    [MemberData(nameof(Values))]
    public async Task Trace_options_are_accepted_refused_and_warned_about_as_qemu_storage_daemon_does(string[] trace)
    {
        var events = _dir.File("events");
        await File.WriteAllTextAsync(events, "# a comment\nnbd_*\n\nno_such_event\n-nbd_*\n");
        string[] arguments = [.. trace.Select(a => a.Replace("EVENTS", events, StringComparison.Ordinal)), "--blockdev", "driver=no-such-driver"];

        var qsd = await ExternalTool.RunAsync("qemu-storage-daemon", arguments, TimeSpan.FromSeconds(30));
        var ours = await BlockMirrorCli.RunAsync(["serve", .. arguments]);

        var context = $"{string.Join(' ', trace)}\nqsd (exit {qsd.ExitCode}):\n{qsd.StandardError}\nours:\n{ours}";
        Assert.True(qsd.ExitCode == ours.ExitCode, context);
        Assert.True(Normalize(qsd.StandardError, "qemu-storage-daemon") == Normalize(ours.StandardError, "blockmirror serve"), context);
    }

    [SkippableTheory]
    [InlineData("--trace")]
    [InlineData("-T")]
    public async Task A_trace_option_without_its_value_is_refused_in_getopts_words(string option)
    {
        var qsd = await ExternalTool.RunAsync("qemu-storage-daemon", [option], TimeSpan.FromSeconds(30));
        var ours = await BlockMirrorCli.RunAsync("serve", option);

        Assert.Equal((1, 1), (qsd.ExitCode, ours.ExitCode));
        Assert.Equal(Normalize(qsd.StandardError, "qemu-storage-daemon"), Normalize(ours.StandardError, "blockmirror serve"));
    }

    /// <summary>
    /// The program's name taken off. QEMU writes a file's location right after its name ("qemu-storage-daemon:FILE: ..."),
    /// our command-line errors have a space there ("blockmirror serve: FILE: ..."); getopt's messages name the program as it was started (a full path).
    /// </summary>
    static string Normalize(string stderr, string program) =>
        string.Join('\n', stderr.Split('\n').Select(l => l.IndexOf(program + ":", StringComparison.Ordinal) is var at and >= 0 && !l[..at].Contains(' ', StringComparison.Ordinal)
            ? l[(at + program.Length + 1)..].TrimStart() : l));
}
