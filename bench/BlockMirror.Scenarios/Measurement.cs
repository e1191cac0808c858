using System.Diagnostics;
using System.Globalization;

namespace BlockMirror.Scenarios;

/// <summary>What one run of one command cost: wall time, CPU time, peak resident memory.</summary>
sealed record Measurement(double Seconds, double UserSeconds, double SystemSeconds, long PeakRssKiB)
{
    public double CpuSeconds => UserSeconds + SystemSeconds;
}

/// <summary>Runs commands under /usr/bin/time, which reports the child's CPU time and peak RSS after it exits.</summary>
static class Runner
{
    /// <summary>Runs a command line through bash and measures it; fails with its output unless it exits 0.</summary>
    public static Measurement Measure(string commandLine, string? workingDirectory = null)
    {
        var report = Path.GetTempFileName();
        try
        {
            var start = new ProcessStartInfo("/usr/bin/time")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
            };
            foreach (var argument in new[] { "-o", report, "-f", "%e %U %S %M", "bash", "-c", commandLine })
            {
                start.ArgumentList.Add(argument);
            }

            using var process = Process.Start(start)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                throw new InvalidOperationException($"'{commandLine}' exited {process.ExitCode}:\n{stdout.Result}\n{stderr.Result}");
            }

            var fields = File.ReadAllLines(report).Last().Split(' ');
            return new Measurement(Parse(fields[0]), Parse(fields[1]), Parse(fields[2]), long.Parse(fields[3], CultureInfo.InvariantCulture));
        }
        finally
        {
            File.Delete(report);
        }

        static double Parse(string s) => double.Parse(s, CultureInfo.InvariantCulture);
    }

    /// <summary>Runs a command line and returns its output; throws unless it exits 0.</summary>
    public static string Run(string commandLine)
    {
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(commandLine);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"'{commandLine}' exited {process.ExitCode}:\n{stdout.Result}\n{stderr.Result}");
        }

        return stdout.Result;
    }

    static readonly TimeSpan SettleTime = TimeSpan.FromSeconds(2);

    /// <summary>Writes dirty pages out and drops the page cache, so every run starts cold. False when the kernel refuses.</summary>

    public static bool DropCaches()
    {
        Run("sync");
        try
        {
            File.WriteAllText("/proc/sys/vm/drop_caches", "3");

            // A pause before the next run, so that what the last one left behind (the VM's host still writing
            // back what the guest's sync handed it) lands less often in the next run. Not measured apart; on
            // the qcow2 rows, runs straight after the drop spread wider than runs after a pause.
            Thread.Sleep(SettleTime);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
