using System.Diagnostics;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Hostile;

/// <summary>
/// Starts a storage daemon with command-line options and tells whether it accepted them: it either exits
/// (refused: its exit code and what it said) or answers on its QMP monitor (accepted: then it is sent quit).
/// Unlike <see cref="DifferentialDaemon.RunAsync"/>, a refusal is the expected outcome here, and is seen as
/// soon as the process exits instead of after the monitor's connect timeout.
/// </summary>
static class DaemonStartup
{
    static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>The outcome: <paramref name="ExitCode"/> 0 when the daemon started and quit on request.</summary>
    public sealed record Outcome(int ExitCode, string StandardError);

    public static async Task<Outcome> RunAsync(string program, IEnumerable<string> arguments, string workingDirectory)
    {
        var monitor = Path.Combine(workingDirectory, $"qmp-{Guid.NewGuid():N}.sock");
        var start = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        foreach (var argument in arguments.Concat(["--chardev", $"socket,id=mon0,path={monitor},server=on,wait=off", "--monitor", "chardev=mon0"]))
        {
            start.ArgumentList.Add(argument);
        }

        using var daemon = Process.Start(start) ?? throw new InvalidOperationException($"could not start {program}");
        var stdout = daemon.StandardOutput.ReadToEndAsync();
        var stderr = daemon.StandardError.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        try
        {
            while (!daemon.HasExited)
            {
                if (clock.Elapsed > Patience)
                {
                    throw new TimeoutException($"{program} {string.Join(' ', start.ArgumentList)} neither exited nor answered QMP within {Patience}");
                }

                if (File.Exists(monitor))
                {
                    try
                    {
                        await using var qmp = await QmpClient.ConnectAsync(monitor, TimeSpan.FromSeconds(10));
                        await qmp.ExecuteAsync("quit");
                    }
                    catch (Exception) when (daemon.WaitForExit(5_000))
                    {
                        // It exited on its own meanwhile (a monitor that answered before the options were
                        // applied): its exit code tells.
                    }

                    await daemon.WaitForExitAsync().WaitAsync(Patience);
                    break;
                }

                await Task.Delay(20);
            }

            _ = await stdout;
            return new Outcome(daemon.ExitCode, await stderr);
        }
        finally
        {
            if (!daemon.HasExited)
            {
                daemon.Kill(entireProcessTree: true);
                await daemon.WaitForExitAsync();
            }
        }
    }
}
