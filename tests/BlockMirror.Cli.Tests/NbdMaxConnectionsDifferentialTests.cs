using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The NBD server's <c>max-connections</c> on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>, over QMP
/// (nbd-server-start) and on the command line (<c>--nbd-server</c>): past the limit a client is not greeted until a
/// served one leaves (it waits in the listen backlog), and with a limit of 1 the exports do not advertise
/// NBD_FLAG_CAN_MULTI_CONN (as nbdinfo reads it).
/// </summary>
public sealed class NbdMaxConnectionsDifferentialTests
{
    [SkippableFact]
    public async Task Past_max_connections_a_client_waits_for_its_greeting_on_both_daemons()
    {
        ExternalTool.Require("nbdinfo");
        using var root = new TempDirectory("bm-nbd-max-conn-");
        var seen = new List<string>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemon.Name)).FullName;
            await File.WriteAllBytesAsync(Path.Combine(dir, "disk.raw"), new byte[1 << 20]);
            await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=n0,filename={dir}/disk.raw"], "n0", async (qmp, _) =>
            {
                var limited = $"{dir}/limited.sock";
                foreach (var limit in new[] { 2, 1 })
                {
                    await qmp.ExecuteAsync("nbd-server-stop");
                    await qmp.ExecuteAsync("nbd-server-start", new JsonObject
                    {
                        ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = limited } },
                        ["max-connections"] = limit,
                    });
                    await qmp.ExecuteAsync("block-export-add", new JsonObject { ["type"] = "nbd", ["id"] = "e", ["node-name"] = "n0", ["name"] = "disk" });
                    // Greetings first, on a server no client has used yet: a client that just left may still count
                    // against the limit for a moment on qemu-storage-daemon.
                    var greetings = await NbdGreetings.CountAsync(limited, limit);
                    seen.Add($"{daemon.Name} max-connections={limit}: multi-conn {await CanMultiConnAsync(limited)}; {greetings}");
                }
            });
        }

        Assert.Equal(
            "qsd max-connections=2: multi-conn yes; greeted at once: 2, then after one left: 1\n" +
            "qsd max-connections=1: multi-conn no; greeted at once: 1, then after one left: 1\n" +
            "ours max-connections=2: multi-conn yes; greeted at once: 2, then after one left: 1\n" +
            "ours max-connections=1: multi-conn no; greeted at once: 1, then after one left: 1",
            string.Join('\n', seen));
    }

    [SkippableFact]
    public async Task Max_connections_on_the_command_line_is_applied_as_by_qemu_storage_daemon()
    {
        ExternalTool.Require("nbdinfo");
        using var root = new TempDirectory("bm-nbd-max-conn-cl-");
        var seen = new List<string>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var socket = Path.Combine(root.Path, $"{daemon.Name}.sock");
            var start = new ProcessStartInfo(daemon.Program) { RedirectStandardError = true, UseShellExecute = false };
            foreach (var argument in (string[])[.. daemon.Prefix, "--blockdev", "driver=null-co,node-name=n0,size=1048576",
                "--nbd-server", $"addr.type=unix,addr.path={socket},max-connections=1", "--export", "type=nbd,id=e,node-name=n0,name=disk"])
            {
                start.ArgumentList.Add(argument);
            }

            using var process = Process.Start(start)!;
            try
            {
                for (var wait = 0; wait < 300 && !File.Exists(socket); wait++)
                {
                    Assert.False(process.HasExited, $"{daemon.Name} exited: {(process.HasExited ? await process.StandardError.ReadToEndAsync() : "")}");
                    await Task.Delay(20);
                }

                var greetings = await NbdGreetings.CountAsync(socket, 1);
                seen.Add($"{daemon.Name}: multi-conn {await CanMultiConnAsync(socket)}; {greetings}");
            }
            finally
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync();
            }
        }

        Assert.Equal(
            "qsd: multi-conn no; greeted at once: 1, then after one left: 1\n" +
            "ours: multi-conn no; greeted at once: 1, then after one left: 1",
            string.Join('\n', seen));
    }

    static async Task<string> CanMultiConnAsync(string socket)
    {
        var result = await ExternalTool.RunAsync("nbdinfo", ["--can", "multi-conn", $"nbd+unix:///disk?socket={socket}"]);
        return result.ExitCode switch { 0 => "yes", 2 => "no", _ => $"nbdinfo failed: {result.StandardError}" };
    }
}
