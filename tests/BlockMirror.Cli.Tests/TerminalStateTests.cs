using System.Diagnostics;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// blockmirror on a terminal (a pseudo-terminal made by script(1)): whatever mode the process switched the
/// terminal to is switched back before it exits, on success, on error and after SIGINT, and the output ends
/// on a fresh line. .NET's console switches the keypad to transmit mode and did not switch it back.
/// </summary>
public sealed class TerminalStateTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-terminal-");

    public void Dispose() => _dir.Dispose();

    /// <summary>script's arguments that run <c>blockmirror ARGS</c> on a pseudo-terminal of its own.</summary>
    static string[] OnTerminal(params string[] arguments)
    {
        ExternalTool.Require("script");
        var command = string.Join(' ', BlockMirrorCli.Launcher.Concat(arguments).Select(a => $"'{a.Replace("'", "'\\''", StringComparison.Ordinal)}'"));
        return ["-qec", command, "/dev/null"];
    }

    /// <summary>Every mode the output sets (keypad, cursor keys, a hidden cursor) is reset after it, and the last line is ended.</summary>
    static void AssertLeftAsFound(string output)
    {
        foreach (var (set, reset) in new[] { ("\u001b[?1h", "\u001b[?1l"), ("\u001b=", "\u001b>"), ("\u001b[?25l", "\u001b[?25h") })
        {
            var last = output.LastIndexOf(set, StringComparison.Ordinal);
            Assert.True(last < 0 || output.LastIndexOf(reset, StringComparison.Ordinal) > last,
                $"{set.Replace("\u001b", "ESC", StringComparison.Ordinal)} is not reset:\n{output.Replace("\u001b", "ESC", StringComparison.Ordinal)}");
        }

        var text = output.Replace("\u001b[?1l\u001b>", "", StringComparison.Ordinal);
        Assert.EndsWith("\n", text, StringComparison.Ordinal);
    }

    [SkippableTheory]
    [InlineData("-V")]
    [InlineData("info", "missing.qcow2")]
    [InlineData("create", "x.raw", "1M")]
    public async Task A_command_leaves_the_terminal_as_it_found_it(params string[] arguments)
    {
        var result = await ExternalTool.RunAsync("script", OnTerminal(arguments), workingDirectory: _dir.Path);

        Assert.True(result.StandardOutput.Trim().Length > 0, "the command printed nothing on the terminal");
        AssertLeftAsFound(result.StandardOutput);
    }

    [SkippableFact]
    public async Task An_interrupted_mirror_ends_its_progress_line_and_leaves_the_terminal_as_it_found_it()
    {
        var source = _dir.File("source.raw");
        await QemuImages.CreateAsync(source, "64M", "write -P 0x5a 0 16M");
        var start = new ProcessStartInfo("script") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardInput = true, WorkingDirectory = _dir.Path };
        // The shell script(1) runs the command with is $SHELL: pinned, so a run here is a run in CI.
        start.Environment["SHELL"] = "/bin/sh";
        foreach (var argument in OnTerminal("mirror", "--speed", "1M", source, _dir.File("copy.raw")))
        {
            start.ArgumentList.Add(argument);
        }

        using var script = Process.Start(start)!;
        var output = new System.Text.StringBuilder();
        var buffer = new char[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // Once the progress line is drawn, SIGINT to blockmirror, script's child.
        while (!output.ToString().Contains(" % ", StringComparison.Ordinal))
        {
            var read = await script.StandardOutput.ReadAsync(buffer, timeout.Token);
            Assert.True(read > 0, $"script ended first:\n{output}");
            output.Append(buffer, 0, read);
        }

        // Ctrl-C typed on the terminal: the line discipline sends SIGINT to the foreground process group, as it
        // does for a user. Signalling script's child would reach only the shell when /bin/sh (dash) does not
        // exec its last command, and the mirror would run on to the end.
        await script.StandardInput.WriteAsync('\u0003');
        await script.StandardInput.FlushAsync(timeout.Token);
        output.Append(await script.StandardOutput.ReadToEndAsync(timeout.Token));
        await script.WaitForExitAsync(timeout.Token);

        var text = output.ToString();
        Assert.Contains("cancelled\r\n", text, StringComparison.Ordinal);
        Assert.Contains("blockmirror mirror: interrupted", text, StringComparison.Ordinal);
        AssertLeftAsFound(text);
        Assert.False(File.Exists(_dir.File("copy.raw")));
    }
}
