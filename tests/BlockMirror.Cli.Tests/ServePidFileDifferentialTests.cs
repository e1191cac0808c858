using System.Globalization;
using System.Net.Sockets;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>--pidfile</c> next to other processes, qemu-storage-daemon 7.2 and <c>blockmirror serve</c> side by side: a pid
/// file another daemon holds, or an image another process has open, is refused in QEMU's words and left as it was
/// (before, ours wrote its pid over either and removed the file at exit: an image QEMU was serving was destroyed);
/// each daemon's lock on its pid file is seen by the other; a pid file left by a daemon that was killed is taken
/// over, its old contents cut.
/// </summary>
public sealed class ServePidFileDifferentialTests : IDisposable
{
    const string LockRefused = "cannot create PID file: Cannot lock pid file: Resource temporarily unavailable";

    readonly TempDirectory _dir = new("blockmirror-pidfile-");

    public void Dispose() => _dir.Dispose();

    static DifferentialDaemon[] Daemons() => [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];

    /// <summary>Starts a daemon serving <paramref name="blockdev"/> with <paramref name="pidfile"/>; returns once the pid file names it.</summary>
    async Task<ServerProcess> HolderAsync(DifferentialDaemon daemon, string pidfile, string blockdev)
    {
        var socket = _dir.File($"{Guid.NewGuid():N}.sock");
        var server = await ServerProcess.StartAsync(daemon.Program,
            [.. daemon.Prefix, "--blockdev", blockdev, "--nbd-server", $"addr.type=unix,addr.path={socket}", "--pidfile", pidfile],
            new UnixDomainSocketEndPoint(socket));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!File.Exists(pidfile) || await File.ReadAllTextAsync(pidfile) != PidLine(server.Id))
        {
            Assert.True(DateTime.UtcNow < deadline, $"{daemon.Name} wrote no pid file within 30 s");
            await Task.Delay(20);
        }

        return server;
    }

    static string PidLine(int pid) => pid.ToString(CultureInfo.InvariantCulture) + "\n";

    /// <summary>Runs a daemon that must refuse to start; returns its one line on stderr without the program's name.</summary>
    static async Task<string> RefusedAsync(DifferentialDaemon daemon, string pidfile)
    {
        var result = await ExternalTool.RunAsync(daemon.Program, [.. daemon.Prefix, "--blockdev", "driver=null-co,node-name=n", "--pidfile", pidfile],
            TimeSpan.FromSeconds(60));
        Assert.True(result.ExitCode == 1, $"{daemon.Name} exited {result.ExitCode}:\n{result.StandardOutput}{result.StandardError}");
        var line = Assert.Single(result.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        return line.Split(": ", 2)[1];
    }

    [SkippableFact]
    public async Task A_pid_file_another_daemon_holds_and_an_image_qemu_serves_are_refused_and_left_as_they_were()
    {
        var pidfile = _dir.File("holder.pid");
        var image = await ImageRecipes.Qcow2Async(_dir.Path, "served.qcow2", "4M", [], ["write -P 0x5a 0 1M"]);
        var fingerprint = QemuImages.Fingerprint(image);
        await using var holder = await HolderAsync(DifferentialDaemon.Qsd(), pidfile, $"driver=qcow2,node-name=disk,file.driver=file,file.filename={image}");

        foreach (var daemon in Daemons())
        {
            Assert.Equal(LockRefused, await RefusedAsync(daemon, pidfile));
            Assert.Equal(PidLine(holder.Id), await File.ReadAllTextAsync(pidfile));

            Assert.Equal(LockRefused, await RefusedAsync(daemon, image));
            Assert.Equal(fingerprint, QemuImages.Fingerprint(image));
        }
    }

    [SkippableFact]
    public async Task Our_pid_file_lock_is_seen_by_qemu_storage_daemon_and_ours_by_qemu_s()
    {
        foreach (var (holder, contender) in new[] { (DifferentialDaemon.Ours(), DifferentialDaemon.Qsd()), (DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()) })
        {
            var pidfile = _dir.File($"{holder.Name}.pid");
            await using var server = await HolderAsync(holder, pidfile, "driver=null-co,node-name=n");
            Assert.Equal(LockRefused, await RefusedAsync(contender, pidfile));
            Assert.Equal(PidLine(server.Id), await File.ReadAllTextAsync(pidfile));
        }
    }

    [SkippableFact]
    public async Task A_pid_file_a_killed_daemon_left_is_taken_over_with_its_old_contents_cut()
    {
        foreach (var daemon in Daemons())
        {
            var pidfile = _dir.File($"stale-{daemon.Name}.pid");
            await File.WriteAllTextAsync(pidfile, "4194304 left by a daemon that was killed, longer than any pid\n");
            // HolderAsync waits until the file reads exactly the new pid and its newline.
            await using var server = await HolderAsync(daemon, pidfile, "driver=null-co,node-name=n");
        }
    }
}
