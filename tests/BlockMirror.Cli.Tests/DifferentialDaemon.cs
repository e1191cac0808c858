using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// One side of a differential test: the real qemu-storage-daemon or <c>blockmirror serve</c>, given the same
/// qemu-storage-daemon options and driven by the same QMP script, so that any difference in events, replies
/// or resulting images is ours to explain.
/// </summary>
sealed record DifferentialDaemon(string Name, string Program, string[] Prefix)
{
    /// <summary>The export name the NBD server gives the exported node.</summary>
    public const string ExportName = "disk";

    /// <summary>qemu-storage-daemon; skips the test (fails it in CI) when it or qemu-io is not installed.</summary>
    public static DifferentialDaemon Qsd()
    {
        ExternalTool.Require("qemu-io");
        return new("qsd", ExternalTool.Require("qemu-storage-daemon"), []);
    }

    /// <summary>The events of a job that reports READY and is completed, up to quit.</summary>
    public static readonly string[] ReadyJobEvents =
    [
        "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY",
        "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null",
        "BLOCK_EXPORT_DELETED",
    ];

    public static DifferentialDaemon Ours() => new("ours", BlockMirrorCli.Launcher[0], [.. BlockMirrorCli.Launcher.Skip(1), "serve"]);

    /// <summary>
    /// Starts the daemon with <paramref name="blockdevs"/>, a monitor on <c>DIR/qmp.sock</c> and an NBD server
    /// on <c>DIR/nbd.sock</c> exporting <paramref name="exportNode"/> writable; runs the script (given the
    /// client and the export's NBD URI), sends quit and waits for the exit. Returns the events, in
    /// <see cref="Describe"/>'s words. With <paramref name="impliedKeys"/> the monitor and export are given
    /// without their first key (<c>mon0</c>, <c>nbd,...</c>, as the chardev's <c>socket,...</c> always is), as QEMU allows.
    /// </summary>
    /// <remarks>
    /// With <paramref name="sigterm"/>, the daemon is stopped by SIGTERM instead of quit, and the events it
    /// sends until it closes the monitor are kept.
    /// </remarks>
    /// <remarks>
    /// <paramref name="extra"/> options follow the standard ones (more exports, say).
    /// </remarks>
    public async Task<List<string>> RunAsync(string dir, string[] blockdevs, string exportNode, Func<QmpClient, string, Task> script, bool impliedKeys = false, bool sigterm = false,
        string[]? extra = null)
    {
        var (chardev, type) = impliedKeys ? ("", "") : ("chardev=", "type=");
        string[] arguments =
        [
            .. Prefix, .. blockdevs,
            "--chardev", $"socket,id=mon0,path={dir}/qmp.sock,server=on,wait=off",
            "--monitor", $"{chardev}mon0",
            "--nbd-server", $"addr.type=unix,addr.path={dir}/nbd.sock",
            "--export", $"{type}nbd,id=exp0,node-name={exportNode},name={ExportName},writable=on",
            .. extra ?? [],
        ];
        var start = new ProcessStartInfo(Program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var daemon = Process.Start(start)!;
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            QmpClient connected;
            try
            {
                connected = await QmpClient.ConnectAsync($"{dir}/qmp.sock");
            }
            catch (Exception e) when (daemon.WaitForExit(5_000))
            {
                // The daemon refused its options: what it said is the useful part.
                throw new InvalidOperationException($"{Name} exited with {daemon.ExitCode} before its monitor answered: {await stderr}", e);
            }

            await using var qmp = connected;
            await script(qmp, $"nbd+unix:///{ExportName}?socket={dir}/nbd.sock");
            if (sigterm)
            {
                await ExternalTool.RunCheckedAsync("kill", "-TERM", $"{daemon.Id}");
                await ReadUntilClosedAsync(qmp);
            }
            else
            {
                await qmp.ExecuteAsync("quit");
            }

            Assert.True(daemon.WaitForExit(30_000), $"{Name} did not exit after quit");
            return [.. qmp.Events.Select(Describe)];
        }
        finally
        {
            if (!daemon.HasExited)
            {
                daemon.Kill(entireProcessTree: true);
            }

            await daemon.WaitForExitAsync();
            _ = await stderr;
        }
    }

    /// <summary>Keeps every event until the daemon closes the monitor.</summary>
    static async Task ReadUntilClosedAsync(QmpClient qmp)
    {
        try
        {
            while (true)
            {
                qmp.Events.Add(await qmp.ReadObjectAsync(TimeSpan.FromSeconds(30)));
            }
        }
        catch (Exception e) when (e is EndOfStreamException or IOException)
        {
        }
    }

    /// <summary>
    /// An event as the tests compare it: its name; for JOB_STATUS_CHANGE the new status, for BLOCK_JOB_ERROR
    /// the operation and the action, for a BLOCK_JOB_COMPLETED that carries an error the error.
    /// </summary>
    public static string Describe(JsonObject e)
    {
        var name = (string)e["event"]!;
        var data = e["data"];
        return name switch
        {
            "JOB_STATUS_CHANGE" => $"{name} {(string?)data!["status"]}",
            "BLOCK_JOB_ERROR" => $"{name} {(string?)data!["operation"]} {(string?)data["action"]}",
            "BLOCK_JOB_COMPLETED" when data?["error"] is { } error => $"{name} error: {(string?)error}",
            _ => name,
        };
    }

    /// <summary>Waits until the job is gone (its JOB_STATUS_CHANGE to null).</summary>
    public static Task WaitJobGoneAsync(QmpClient qmp) =>
        qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "null");
}
