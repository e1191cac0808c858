using System.Diagnostics;
using System.Globalization;
using Xunit;

namespace BlockMirror.TestKit;

/// <summary>
/// Runs a crash-test process (BlockMirror.CrashWriter) that prints "done N" after each acknowledged step, and
/// kills it (SIGKILL) once it has reported a given step and run a little longer.
/// </summary>
public static class CrashRun
{
    /// <summary>
    /// Starts <c>dotnet DLL ARGUMENTS</c>, waits until it reports step <paramref name="killAfterStep"/> done, lets it
    /// go on for <paramref name="jitterMs"/>, kills it; returns every line it printed.
    /// </summary>
    public static async Task<IReadOnlyList<string>> RunAndKillAsync(string dll, IEnumerable<string> arguments, int killAfterStep, int jitterMs)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(dll);
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var lines = new List<string>();
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reader = Task.Run(async () =>
        {
            while (await process.StandardOutput.ReadLineAsync() is { } line)
            {
                lock (lines)
                {
                    lines.Add(line);
                }

                if (line == $"done {killAfterStep}")
                {
                    reached.TrySetResult();
                }
            }

            reached.TrySetResult();
        });

        try
        {
            await reached.Task.WaitAsync(TimeSpan.FromSeconds(60));
            await Task.Delay(jitterMs);
            if (process.HasExited)
            {
                Assert.Fail($"the crash writer exited on its own: {await stderr}");
            }
        }
        finally
        {
            // Also when the test fails: a writer left running would go on writing for ever.
            process.Kill();
            await process.WaitForExitAsync();
        }

        await reader;
        return lines;
    }

    /// <summary>N of the last line "PREFIX N", or -1.</summary>
    public static int Last(IReadOnlyList<string> lines, string prefix)
    {
        var last = -1;
        foreach (var line in lines)
        {
            if (line.StartsWith(prefix, StringComparison.Ordinal))
            {
                last = int.Parse(line[prefix.Length..], CultureInfo.InvariantCulture);
            }
        }

        return last;
    }
}
