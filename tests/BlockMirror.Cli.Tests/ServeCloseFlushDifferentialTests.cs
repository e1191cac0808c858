using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// What an NBD client wrote and never flushed reaches the disk when the node is closed, as QEMU's bdrv_close
/// flushes every node: at <c>blockdev-del</c>, and when the daemon stops on SIGTERM. Both daemons are traced with
/// strace (fsync and fdatasync of each image file's descriptor), on the same script: nbdcopy, which does not flush
/// by default, writes both exports; one node is deleted, then the daemon is stopped. The same for nodes of the
/// <c>nbd</c> driver, seen from the NBD server (nbdkit's log filter records every command it gets).
/// </summary>
public sealed class ServeCloseFlushDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-close-flush-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Daemons => ["qsd", "ours"];

    [SkippableTheory]
    [MemberData(nameof(Daemons))]
    public async Task Unflushed_writes_are_flushed_when_a_node_is_deleted_and_when_the_daemon_stops(string which)
    {
        ExternalTool.Require("strace");
        ExternalTool.Require("nbdcopy");
        var daemon = which == "qsd" ? DifferentialDaemon.Qsd() : DifferentialDaemon.Ours();
        var dir = Path.Combine(_dir.Path, which);
        Directory.CreateDirectory(dir);
        var data = Path.Combine(dir, "data.bin");
        var bytes = new byte[1 << 20];
        new Random(5).NextBytes(bytes);
        await File.WriteAllBytesAsync(data, bytes);
        foreach (var image in new[] { "a.raw", "b.raw" })
        {
            await File.WriteAllBytesAsync(Path.Combine(dir, image), new byte[1 << 20]);
        }

        var trace = Path.Combine(dir, "strace.out");
        Process? strace = null;
        var descriptors = new Dictionary<string, string>();
        var log = new List<string>();
        try
        {
            await daemon.RunAsync(dir,
            [
                "--blockdev", $"driver=file,node-name=af,filename={dir}/a.raw", "--blockdev", "driver=raw,node-name=a,file=af",
                "--blockdev", $"driver=file,node-name=bf,filename={dir}/b.raw", "--blockdev", "driver=raw,node-name=b,file=bf",
            ], "a", async (qmp, uri) =>
            {
                var pid = DaemonPid(dir);
                foreach (var image in new[] { "a.raw", "b.raw" })
                {
                    descriptors[image] = Descriptor(pid, Path.Combine(dir, image));
                }

                strace = Process.Start(new ProcessStartInfo("strace", ["-f", "-qq", "-p", pid.ToString(CultureInfo.InvariantCulture),
                    "-e", "trace=fsync,fdatasync", "-o", trace]) { RedirectStandardError = true })!;
                await WaitAttachedAsync(trace);

                await ExternalTool.RunCheckedAsync("nbdcopy", data, uri);
                await ExternalTool.RunCheckedAsync("nbdcopy", data, $"nbd+unix:///b?socket={dir}/nbd.sock");
                await qmp.ExecuteAsync("block-export-del", new JsonObject { ["id"] = "expb" });
                await qmp.WaitEventAsync("BLOCK_EXPORT_DELETED", e => (string?)e["data"]!["id"] == "expb");
                await qmp.ExecuteAsync("blockdev-del", new JsonObject { ["node-name"] = "b" });
                await qmp.ExecuteAsync("blockdev-del", new JsonObject { ["node-name"] = "bf" });
                log.Add($"b.raw flushed at blockdev-del: {Synced(await File.ReadAllTextAsync(trace), descriptors["b.raw"])}");
            }, sigterm: true, extra: ["--export", "type=nbd,id=expb,node-name=b,name=b,writable=on"]);

            await strace!.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            log.Add($"a.raw flushed at exit: {Synced(await File.ReadAllTextAsync(trace), descriptors["a.raw"])}");
        }
        finally
        {
            if (strace is { HasExited: false })
            {
                strace.Kill();
            }

            strace?.Dispose();
        }

        Assert.Equal(["b.raw flushed at blockdev-del: yes", "a.raw flushed at exit: yes"], log);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(Path.Combine(dir, "a.raw")));
    }

    [SkippableTheory]
    [MemberData(nameof(Daemons))]
    public async Task Unflushed_writes_through_an_nbd_node_are_flushed_on_its_server_when_the_node_closes(string which)
    {
        ExternalTool.Require("nbdkit");
        ExternalTool.Require("nbdcopy");
        var daemon = which == "qsd" ? DifferentialDaemon.Qsd() : DifferentialDaemon.Ours();
        var dir = Path.Combine(_dir.Path, which + "-nbd");
        Directory.CreateDirectory(dir);
        var data = Path.Combine(dir, "data.bin");
        await File.WriteAllBytesAsync(data, RandomNumberGenerator.GetBytes(1 << 20));

        // Servers that log every command they are sent. Node b is written and deleted, a written and closed at exit,
        // c opened read-only, d writable and never written: QEMU flushes every writable nbd node at its close,
        // written or not (its flush goes to the server before it checks for writes).
        var servers = new Dictionary<string, NbdServerProcess>();
        var log = new List<string>();
        try
        {
            foreach (var name in new[] { "a", "b", "c", "d" })
            {
                servers[name] = await NbdServerProcess.NbdkitAsync(Path.Combine(dir, $"{name}.sock"), "--filter=log", "memory", "1M",
                    $"logfile={dir}/{name}.log");
            }

            string[] Node(string name, string readOnly = "off") =>
                ["--blockdev", $"driver=nbd,node-name={name},read-only={readOnly},server.type=unix,server.path={servers[name].SocketPath},export={NbdServerProcess.ExportName}"];
            await daemon.RunAsync(dir, [.. Node("a"), .. Node("b"), .. Node("c", readOnly: "on"), .. Node("d")], "a", async (qmp, uri) =>
            {
                await ExternalTool.RunCheckedAsync("nbdcopy", data, uri);
                await ExternalTool.RunCheckedAsync("nbdcopy", data, $"nbd+unix:///b?socket={dir}/nbd.sock");
                await ExternalTool.RunCheckedAsync("nbdcopy", $"nbd+unix:///c?socket={dir}/nbd.sock", "null:");
                await qmp.ExecuteAsync("block-export-del", new JsonObject { ["id"] = "expb" });
                await qmp.WaitEventAsync("BLOCK_EXPORT_DELETED", e => (string?)e["data"]!["id"] == "expb");
                await qmp.ExecuteAsync("blockdev-del", new JsonObject { ["node-name"] = "b" });
                log.Add($"b: {await CommandsAsync(servers["b"], Path.Combine(dir, "b.log"))}");
            }, sigterm: true, extra:
            [
                "--export", "type=nbd,id=expb,node-name=b,name=b,writable=on",
                "--export", "type=nbd,id=expc,node-name=c,name=c",
            ]);

            log.Add($"a: {await CommandsAsync(servers["a"], Path.Combine(dir, "a.log"))}");
            log.Add($"c: {await CommandsAsync(servers["c"], Path.Combine(dir, "c.log"))}");
            log.Add($"d: {await CommandsAsync(servers["d"], Path.Combine(dir, "d.log"))}");
        }
        finally
        {
            foreach (var server in servers.Values)
            {
                await server.DisposeAsync();
            }
        }

        Assert.Equal(
            ["b: writes, then a flush, then disconnect", "a: writes, then a flush, then disconnect", "c: no write, no flush, disconnect", "d: no write, a flush, disconnect"],
            log);
    }

    /// <summary>
    /// What nbdkit's log says the client did, once it has disconnected (waited for): whether a flush came after the
    /// last write, and whether the client said goodbye.
    /// </summary>
    static async Task<string> CommandsAsync(NbdServerProcess server, string logFile)
    {
        var lines = Array.Empty<string>();
        for (var i = 0; i < 200; i++)
        {
            lines = File.Exists(logFile) ? await File.ReadAllLinesAsync(logFile) : [];
            if (lines.Any(l => l.Contains(" Disconnect ", StringComparison.Ordinal)))
            {
                break;
            }

            await Task.Delay(50);
        }

        // "connection=N Write id=1 ... " when a request comes, "connection=N ...Write id=1 return=0" when it is answered.
        var requests = lines.Where(l => l.Split(' ') is [_, _, var connection, var command, ..]
            && connection.StartsWith("connection=", StringComparison.Ordinal) && !command.StartsWith("...", StringComparison.Ordinal)).ToList();
        var lastWrite = requests.FindLastIndex(l => l.Contains(" Write ", StringComparison.Ordinal));
        var flushAfter = requests.FindIndex(Math.Max(0, lastWrite), l => l.Contains(" Flush ", StringComparison.Ordinal));
        var goodbye = requests.Exists(l => l.Contains(" Disconnect ", StringComparison.Ordinal)) ? "disconnect" : "no disconnect";
        return lastWrite < 0
            ? $"no write, {(flushAfter < 0 ? "no flush" : "a flush")}, {goodbye}"
            : $"writes, then {(flushAfter < 0 ? "no flush" : "a flush")}, then {goodbye}";
    }

    /// <summary>The daemon whose NBD socket is in <paramref name="dir"/>.</summary>
    static int DaemonPid(string dir)
    {
        foreach (var process in Directory.GetDirectories("/proc").Select(Path.GetFileName).Where(n => n!.All(char.IsAsciiDigit)))
        {
            try
            {
                var cmdline = File.ReadAllText($"/proc/{process}/cmdline");
                if (cmdline.Contains($"addr.path={dir}/nbd.sock", StringComparison.Ordinal) && !cmdline.StartsWith("strace", StringComparison.Ordinal))
                {
                    return int.Parse(process!, CultureInfo.InvariantCulture);
                }
            }
            catch (IOException)
            {
                // Gone meanwhile.
            }
        }

        throw new InvalidOperationException($"no daemon serves {dir}/nbd.sock");
    }

    /// <summary>The descriptor under which process <paramref name="pid"/> has <paramref name="path"/> open (its first).</summary>
    static string Descriptor(int pid, string path) =>
        new DirectoryInfo($"/proc/{pid}/fd").GetFiles().First(f => f.LinkTarget == path).Name;

    /// <summary>strace writes its output file once it has attached; a moment more for every thread.</summary>
    static async Task WaitAttachedAsync(string trace)
    {
        for (var i = 0; i < 100 && !File.Exists(trace); i++)
        {
            await Task.Delay(50);
        }

        await Task.Delay(300);
    }

    static string Synced(string trace, string fd) =>
        trace.Contains($"fdatasync({fd})", StringComparison.Ordinal) || trace.Contains($"fsync({fd})", StringComparison.Ordinal) ? "yes" : "no";
}
