using System.Diagnostics;
using System.Globalization;
using BlockMirror.TestKit;

namespace BlockMirror.Scenarios;

/// <summary>
/// A storage daemon under test, qemu-storage-daemon or <c>blockmirror serve</c>, started with the same
/// qemu-storage-daemon options and driven through the same QMP client. Reads the daemon's own CPU time and
/// peak memory from /proc before it exits.
/// </summary>
sealed class Daemon : IAsyncDisposable
{
    readonly Process _process;
    readonly Task<string> _stderr;

    Daemon(Process process, Task<string> stderr, QmpClient qmp, string name)
    {
        _process = process;
        _stderr = stderr;
        Qmp = qmp;
        Name = name;
    }

    public QmpClient Qmp { get; }

    public string Name { get; }

    /// <summary>The daemon's process id (for a scenario that must stop it at once: SIGSTOP, SIGKILL).</summary>
    public int Pid => _process.Id;

    /// <summary>
    /// Starts the daemon with <paramref name="arguments"/> and a monitor on <c>DIRECTORY/NAME.sock</c>; inside
    /// network namespace <paramref name="ns"/> when given (<c>ip netns exec</c>, which execs the daemon).
    /// </summary>
    public static async Task<Daemon> StartAsync(Options options, bool ours, string directory, IEnumerable<string> arguments, string? ns = null, string name = "qmp")
    {
        var socket = Path.Combine(directory, $"{name}.sock");
        File.Delete(socket);
        var daemon = ours ? options.Start("serve") : new ProcessStartInfo("qemu-storage-daemon") { UseShellExecute = false };
        IEnumerable<string> all = [.. daemon.ArgumentList, .. arguments, "--chardev", $"socket,id=mon0,path={socket},server=on,wait=off", "--monitor", "chardev=mon0"];
        var start = ns is null ? new ProcessStartInfo(daemon.FileName, all) : NetworkNamespaces.StartInfo(ns, daemon.FileName, all);
        start.UseShellExecute = false;
        start.RedirectStandardError = true;

        var process = Process.Start(start)!;
        // Read from the start: a daemon that says much on stderr must not block on a full pipe.
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            var qmp = await QmpClient.ConnectAsync(socket);
            return new Daemon(process, stderr, qmp, ours ? "blockmirror" : "qemu-storage-daemon");
        }
        catch
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException($"{start.FileName} did not start: {await stderr}");
        }
    }

    /// <summary>How the daemon ended (exit status and what it said on stderr), for a monitor that closed unexpectedly.</summary>
    public async Task<string> ExitReportAsync()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await _process.WaitForExitAsync(timeout.Token);
        return $"{Name} exited with {_process.ExitCode}: {await _stderr}";
    }

    /// <summary>User plus system CPU seconds the daemon has used so far.</summary>
    public double CpuSeconds()
    {
        // /proc/PID/stat: fields 14 and 15 (utime, stime) in clock ticks, after the ")" that ends the name.
        var stat = File.ReadAllText($"/proc/{_process.Id}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return ticks / 100.0;
    }

    /// <summary>Peak resident memory (VmHWM) in MiB.</summary>
    public double PeakRssMiB()
    {
        var line = File.ReadLines($"/proc/{_process.Id}/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Qmp.ExecuteAsync("quit");
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or EndOfStreamException)
        {
        }

        if (!_process.WaitForExit(30_000))
        {
            _process.Kill(entireProcessTree: true);
        }

        await Qmp.DisposeAsync();
        _process.Dispose();
    }
}
