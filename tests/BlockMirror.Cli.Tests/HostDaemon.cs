using System.Diagnostics;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>A storage daemon (qemu-storage-daemon or <c>blockmirror serve</c>) running on one of <see cref="TwoHosts"/>, with its monitor connected.</summary>
sealed class HostDaemon : IAsyncDisposable
{
    readonly Process _process;
    readonly Task<string> _stderr;

    HostDaemon(Process process, Task<string> stderr, string name)
    {
        _process = process;
        _stderr = stderr;
        Name = name;
    }

    public string Name { get; }

    public QmpClient Qmp { get; private set; } = null!;

    public bool HasExited => _process.HasExited;

    public static async Task<HostDaemon> StartAsync(string ns, DifferentialDaemon kind, string dir, string name, IEnumerable<string> arguments)
    {
        var monitor = Path.Combine(dir, $"{name}-qmp.sock");
        // A daemon started again under the same name (a restarted host) must not find its predecessor's socket.
        File.Delete(monitor);
        var start = NetworkNamespaces.StartInfo(ns, kind.Program, [
            .. kind.Prefix, .. arguments,
            "--chardev", $"socket,id=mon0,path={monitor},server=on,wait=off", "--monitor", "chardev=mon0",
        ]);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        var process = Process.Start(start)!;
        var daemon = new HostDaemon(process, process.StandardError.ReadToEndAsync(), $"{name} ({kind.Name})");
        _ = process.StandardOutput.ReadToEndAsync();
        try
        {
            daemon.Qmp = await QmpClient.ConnectAsync(monitor);
        }
        catch (Exception e) when (process.WaitForExit(5_000))
        {
            throw new InvalidOperationException($"{daemon.Name} exited with {process.ExitCode} before its monitor answered: {await daemon._stderr}", e);
        }

        return daemon;
    }

    /// <summary>Kills the daemon at once (SIGKILL), as a host that goes down, and waits until it is gone.</summary>
    public async Task KillAsync()
    {
        _process.Kill();
        await _process.WaitForExitAsync();
    }

    /// <summary>Sends quit and waits for the exit; fails the test when it does not exit cleanly.</summary>
    public async Task QuitAsync()
    {
        await Qmp.ExecuteAsync("quit");
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await _process.WaitForExitAsync(timeout.Token);
        Assert.True(_process.ExitCode == 0, $"{Name} exited {_process.ExitCode}: {await _stderr}");
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
        }

        await _process.WaitForExitAsync();
        if (Qmp is not null)
        {
            await Qmp.DisposeAsync();
        }

        _process.Dispose();
    }
}
