using System.Diagnostics;
using System.Globalization;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Runs a long command, sends it a signal once a line of its standard output shows it got where the test
/// wants it, and returns what it printed and its exit status (the command's own reaction to the signal).
/// </summary>
static class SignalledRun
{
    /// <param name="signal">kill's name for it: INT or TERM.</param>
    public static async Task<CliResult> RunAsync(ProcessStartInfo start, Func<string, bool> ready, string signal)
    {
        ExternalTool.Require("kill");
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {start.FileName}");
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = new List<string>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            while (await process.StandardOutput.ReadLineAsync(timeout.Token) is { } line)
            {
                stdout.Add(line);
                if (ready(line))
                {
                    await ExternalTool.RunCheckedAsync("kill", $"-{signal}", process.Id.ToString(CultureInfo.InvariantCulture));
                    break;
                }
            }

            stdout.Add(await process.StandardOutput.ReadToEndAsync(timeout.Token));
            await process.WaitForExitAsync(timeout.Token);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }

        return new CliResult(process.ExitCode, string.Join('\n', stdout), await stderr, clock.Elapsed);
    }
}
