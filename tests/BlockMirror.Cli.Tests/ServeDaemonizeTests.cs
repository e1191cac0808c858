using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary><c>--daemonize</c>: the command returns once the daemon serves, and the daemon lives on without it.</summary>
public sealed class ServeDaemonizeTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-daemonize-");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Daemonize_returns_when_the_monitor_is_up_and_quit_ends_the_daemon()
    {
        var socket = _dir.File("qmp.sock");
        var pidfile = _dir.File("pid");

        var result = await BlockMirrorCli.RunAsync("serve", "--daemonize", "--pidfile", pidfile,
            "--blockdev", "driver=null-co,node-name=disk,size=1048576",
            "--chardev", $"socket,id=m,path={socket},server=on,wait=off", "--monitor", "m");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.True(File.Exists(socket), "the monitor socket should exist when --daemonize returns");
        var pid = int.Parse(await File.ReadAllTextAsync(pidfile), System.Globalization.CultureInfo.InvariantCulture);
        using var daemon = System.Diagnostics.Process.GetProcessById(pid);
        await using (var qmp = await QmpClient.ConnectAsync(socket))
        {
            Assert.NotNull(await qmp.ExecuteAsync("query-version"));
            await qmp.ExecuteAsync("quit");
        }

        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await daemon.WaitForExitAsync(timeout.Token);
        Assert.False(File.Exists(pidfile));
    }

    [Fact]
    public async Task Daemonize_reports_a_startup_error_and_fails()
    {
        var result = await BlockMirrorCli.RunAsync("serve", "--daemonize", "--blockdev", "driver=file,node-name=a,filename=/nonexistent/x");

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.Contains("/nonexistent/x", result.StandardError, StringComparison.Ordinal);
    }
}
