using System.CommandLine;
using System.Diagnostics;
using BlockMirror.Cli.Commands;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror generate-docs</c>: a man page for <c>blockmirror</c> and each command, and a bash completion
/// script, written by the built program from the command tree it parses with, so a command or option added
/// to the tree is in its page and completes without anyone editing a file.
/// </summary>
public sealed class DocsCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-docs-");

    public void Dispose() => _dir.Dispose();

    async Task GenerateAsync()
    {
        var result = await BlockMirrorCli.RunAsync(["generate-docs", "--man-dir", _dir.File("man"), "--bash-completion", _dir.File("blockmirror.bash")]);
        Assert.True(result.ExitCode == 0, result.ToString());
    }

    /// <summary>A page's text with roff's escaped minus signs read as the plain ones a reader sees.</summary>
    string Page(string name) => File.ReadAllText(_dir.File($"man/{name}.1")).Replace("\\-", "-", StringComparison.Ordinal);

    [Fact]
    public async Task Every_command_option_and_argument_of_the_tree_is_in_its_man_page()
    {
        await GenerateAsync();
        var root = Program.CreateRootCommand();
        var commands = root.Subcommands.Where(c => !c.Hidden).ToList();
        Assert.Contains(commands, c => c.Name == "mirror");

        var rootPage = Page("blockmirror");
        Assert.StartsWith(".TH BLOCKMIRROR 1", rootPage, StringComparison.Ordinal);
        foreach (var command in commands)
        {
            Assert.Contains($"\\fB{command.Name}\\fR", rootPage, StringComparison.Ordinal);
            var page = Page($"blockmirror-{command.Name}");
            Assert.Contains($".B blockmirror {command.Name}\n", page, StringComparison.Ordinal);
            // Its own options and those it inherits (-V, --help), each spelling a user may type.
            foreach (var option in command.Options.Concat(root.Options.Where(o => o.Recursive)))
            {
                foreach (var spelling in option.Aliases.Prepend(option.Name).Where(s => s.StartsWith('-') && s != "-?"))
                {
                    Assert.True(page.Contains($"\\fB{spelling}\\fR", StringComparison.Ordinal), $"{command.Name}: {spelling} is not in its page");
                }
            }

            foreach (var argument in command.Arguments)
            {
                Assert.Contains($"\\fI{argument.Name}\\fR", page, StringComparison.Ordinal);
            }
        }

        // serve's options are qemu-storage-daemon's, read by the daemon itself: its page has them all.
        var serve = Page("blockmirror-serve");
        Assert.All(ServeCommand.Known, option => Assert.Contains(option, serve, StringComparison.Ordinal));
        Assert.Contains("NOTIFY_SOCKET", serve, StringComparison.Ordinal);
        Assert.False(File.Exists(_dir.File("man/blockmirror-generate-docs.1")), "the hidden generator got a page");
    }

    [Fact]
    public async Task Bash_completes_commands_and_each_commands_options()
    {
        await GenerateAsync();
        var root = Program.CreateRootCommand();

        Assert.Equal(["mirror"], await CompleteAsync("blockmirror", "mi"));
        Assert.Equal(["--version"], await CompleteAsync("blockmirror", "--v"));
        Assert.Equal(root.Subcommands.Where(c => !c.Hidden).Select(c => c.Name).Order(), (await CompleteAsync("blockmirror", "")).Order());
        Assert.Equal(["--backing-chain"], await CompleteAsync("blockmirror", "info", "--back"));
        Assert.Equal(["--nbd-server"], await CompleteAsync("blockmirror", "serve", "--nbd"));
        Assert.Equal(["--pidfile"], await CompleteAsync("blockmirror", "serve", "--blockdev", "x", "--pid"));
    }

    /// <summary>What bash's completion function offers for the last word of <paramref name="words"/>.</summary>
    async Task<string[]> CompleteAsync(params string[] words)
    {
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = _dir.Path };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("source \"$1\"; shift; COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); _blockmirror; printf '%s\\n' \"${COMPREPLY[@]}\"");
        start.ArgumentList.Add("bash");
        start.ArgumentList.Add(_dir.File("blockmirror.bash"));
        foreach (var word in words)
        {
            start.ArgumentList.Add(word);
        }

        using var bash = Process.Start(start)!;
        var output = await bash.StandardOutput.ReadToEndAsync();
        var error = await bash.StandardError.ReadToEndAsync();
        await bash.WaitForExitAsync();
        Assert.True(bash.ExitCode == 0 && error.Length == 0, error);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }
}
