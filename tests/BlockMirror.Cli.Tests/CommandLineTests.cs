using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The command line's manners, as qemu-img's and qemu-storage-daemon's: an unknown option is refused as an
/// option (never taken as a file name), a usage error is one line on stderr and a pointer to --help (never
/// the help on stdout), -V/--version work after every command, and <c>serve --help</c> documents its options.
/// </summary>
public sealed partial class CommandLineTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-cli-");

    public void Dispose() => _dir.Dispose();

    static void AssertUsageError(CliResult result, string command, string message)
    {
        var path = command.Length == 0 ? "blockmirror" : $"blockmirror {command}";
        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.True(result.StandardOutput.Length == 0, $"nothing on stdout:\n{result}");
        Assert.Equal([$"{path}: {message}", $"Try '{path} --help' for more information"], result.ErrorLines);
    }

    public static TheoryData<string[]> MistypedOptions => new()
    {
        { new[] { "create", "--qiet", "1G" } },
        { new[] { "create", "-f", "raw", "--qiet", "1G" } },
        { new[] { "info", "--qiet" } },
        { new[] { "map", "--qiet" } },
        { new[] { "check", "--qiet" } },
        { new[] { "compare", "--qiet", "b" } },
        { new[] { "resize", "--qiet", "1G" } },
        { new[] { "commit", "--qiet" } },
        { new[] { "mirror", "--qiet", "target" } },
        { new[] { "bench", "-Z" } },
    };

    [Theory]
    [MemberData(nameof(MistypedOptions))]
    public async Task An_unknown_option_is_refused_as_an_option_and_nothing_is_created(string[] arguments)
    {
        var result = await BlockMirrorCli.RunAsync(arguments, _dir.Path);

        AssertUsageError(result, arguments[0], $"unrecognized option '{arguments.First(a => a is "--qiet" or "-Z")}'");
        Assert.Empty(Directory.EnumerateFileSystemEntries(_dir.Path));
    }

    [SkippableFact]
    public async Task An_unknown_option_gets_qemu_imgs_words()
    {
        var runs = await SideBySide.RunAsync("a mistyped -q", _dir.Path, "create", "--qiet", "x", "1G");

        Assert.Equal(1, runs.Qemu.ExitCode);
        Assert.Equal(1, runs.Ours.ExitCode);
        // The same message after each program's name; both point to --help on the next line.
        Assert.Equal(runs.Qemu.StandardError.Split('\n')[0].Replace("qemu-img: ", "", StringComparison.Ordinal),
            runs.Ours.ErrorLines[0].Replace("blockmirror create: ", "", StringComparison.Ordinal));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_dir.Path));
    }

    [SkippableTheory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    public async Task A_file_that_cannot_be_created_is_named_in_qemu_imgs_words(string format)
    {
        var missing = _dir.File("no-such-dir/x.img");

        var runs = await SideBySide.RunAsync("a directory that does not exist", _dir.Path, "create", "-q", "-f", format, missing, "1M");

        Assert.Equal(1, runs.Qemu.ExitCode);
        Assert.Equal(1, runs.Ours.ExitCode);
        // "FILE: Could not create 'FILE': No such file or directory": never .NET's sentence nor a temporary name.
        Assert.Equal(runs.Qemu.StandardError.Trim().Replace("qemu-img: ", "", StringComparison.Ordinal),
            Assert.Single(runs.Ours.ErrorLines).Replace("blockmirror create: ", "", StringComparison.Ordinal));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_dir.Path));
    }

    [Fact]
    public async Task After_a_double_dash_a_name_starting_with_a_dash_is_a_file()
    {
        var result = await BlockMirrorCli.RunAsync(["create", "-q", "--", "--odd-name", "1M"], _dir.Path);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(1 << 20, new FileInfo(_dir.File("--odd-name")).Length);
    }

    public static TheoryData<string[], string> UsageErrors => new()
    {
        { new[] { "info" }, "expecting FILE" },
        { new[] { "compare", "a" }, "expecting B" },
        { new[] { "info", "a", "b" }, "unexpected argument 'b'" },
        { new[] { "info", "--format" }, "option '--format' requires an argument" },
        { new[] { "info", "-U" }, "expecting FILE" },
        { new[] { "bench", "-c", "many", "x" }, "option '--count' expects an integer, not 'many'" },
        { new[] { "frobnicate" }, "unknown command 'frobnicate'" },
        { Array.Empty<string>(), "missing command" },
    };

    [Theory]
    [MemberData(nameof(UsageErrors))]
    public async Task A_usage_error_is_one_line_on_stderr_and_never_the_help(string[] arguments, string message)
    {
        var result = await BlockMirrorCli.RunAsync(arguments, _dir.Path);

        AssertUsageError(result, arguments.Length == 0 || arguments[0] == "frobnicate" ? "" : arguments[0], message);
    }

    public static TheoryData<string[]> VersionRequests => new()
    {
        { new[] { "-V" } },
        { new[] { "--version" } },
        { new[] { "info", "--version" } },
        { new[] { "mirror", "-V" } },
        { new[] { "serve", "-V" } },
        { new[] { "create", "--version" } },
    };

    [Theory]
    [MemberData(nameof(VersionRequests))]
    public async Task Version_works_after_every_command_in_qemu_imgs_form(string[] arguments)
    {
        var result = await BlockMirrorCli.RunAsync(arguments, _dir.Path);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("", result.StandardError);
        Assert.Equal(2, result.OutputLines.Length);
        Assert.Matches(@"^blockmirror version \d+\.\d+\.\d+ \(QEMU 7\.2 compatible", result.OutputLines[0]);
        Assert.StartsWith("Copyright (c) ", result.OutputLines[1], StringComparison.Ordinal);
    }

    /// <summary>Options of <c>serve</c> that qemu-storage-daemon does not have.</summary>
    static readonly string[] OursOnly = ["--log-level", "--metrics-listen", "--metrics-histograms"];

    [SkippableFact]
    public async Task Serve_help_lists_every_option_qemu_storage_daemons_help_lists()
    {
        var qsd = await ExternalTool.RunAsync(ExternalTool.Require("qemu-storage-daemon"), ["--help"]);
        var ours = await BlockMirrorCli.RunAsync("serve", "--help");

        Assert.True(ours.ExitCode == 0, ours.ToString());
        Assert.Equal("", ours.StandardError);
        var theirOptions = OptionNames(qsd.StandardOutput);
        var ourOptions = OptionNames(ours.StandardOutput);
        Assert.Contains("--blockdev", theirOptions);
        Assert.Equal(theirOptions.Order(StringComparer.Ordinal), ourOptions.Except(OursOnly).Order(StringComparer.Ordinal));
        // The forms with an implied first key are documented as QEMU documents them.
        Assert.Contains("--blockdev [driver=]<driver>", ours.StandardOutput, StringComparison.Ordinal);
        Assert.Contains("--export [type=]nbd,id=<id>,node-name=<node-name>", ours.StandardOutput, StringComparison.Ordinal);
        Assert.Contains("--monitor [chardev=]name", ours.StandardOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_refuses_a_stray_argument_and_an_unknown_option_in_getopts_words()
    {
        var stray = await BlockMirrorCli.RunAsync("serve", "stray");
        var unknown = await BlockMirrorCli.RunAsync("serve", "--frob");
        var missing = await BlockMirrorCli.RunAsync("serve", "--blockdev");

        Assert.Equal(["blockmirror serve: stray: Unexpected argument"], stray.ErrorLines);
        Assert.Equal(["blockmirror serve: unrecognized option '--frob'"], unknown.ErrorLines);
        Assert.Equal(["blockmirror serve: option '--blockdev' requires an argument"], missing.ErrorLines);
        Assert.All([stray, unknown, missing], r => Assert.Equal(1, r.ExitCode));
    }

    /// <summary>The distinct long options a --help text documents (lines that start with an option, after the indent).</summary>
    static HashSet<string> OptionNames(string help) =>
        [.. help.Split('\n').Select(line => OptionLine().Match(line)).Where(m => m.Success).Select(m => m.Groups[1].Value)];

    [GeneratedRegex(@"^  (?:-\w, )?(--[a-z-]+)")]
    private static partial Regex OptionLine();
}
