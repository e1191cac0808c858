using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Where <c>--nbd-server addr.type=inet,...</c> listens on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>:
/// the sockets <c>ss</c> lists (<c>0.0.0.0</c>, <c>[::]</c> IPv6 only, <c>*</c> dual-stack), whether a client
/// reaches the export over 127.0.0.1 and over ::1, or the refusal, for the hosts and flags a user gives: the empty
/// host (every address), <c>::</c> (dual-stack: libvirt's usual listen address reaches IPv4 clients too), names
/// resolved as getaddrinfo resolves them, a service name for the port.
/// </summary>
public sealed class NbdListenAddressDifferentialTests
{
    public static TheoryData<string> Addresses => new()
    {
        "host=,port=PORT",
        "host=::,port=PORT",
        "host=0.0.0.0,port=PORT",
        "host=localhost,port=PORT",
        "host=HOSTNAME,port=PORT",
        "host=,port=PORT,ipv4=off",
        "host=,port=PORT,ipv6=off",
        "host=::,port=PORT,ipv6=on",
        "host=::,port=PORT,ipv4=on,ipv6=on",
        "host=127.0.0.1,port=PORT,keep-alive=on",
        "host=127.0.0.1,port=nbd",
        "host=,port=PORT,ipv4=off,ipv6=off",
        "host=127.0.0.1,port=PORT,ipv4=off",
        "host=::1,port=PORT,ipv6=off",
        "host=nosuchhost.invalid,port=PORT",
        "host=HOSTNAME,port=PORT,numeric=on",
        "host=127.0.0.1,port=abc",
    };

    [SkippableTheory]
    [MemberData(nameof(Addresses))]
    public async Task The_server_listens_where_qemu_storage_daemon_does(string address)
    {
        ExternalTool.Require("ss");
        ExternalTool.Require("nbdinfo");
        var seen = new List<string>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            seen.Add(await ListenAsync(daemon, address.Replace("HOSTNAME", Dns.GetHostName(), StringComparison.Ordinal)));
        }

        Assert.True(seen[0] == seen[1], $"{address}\n--- qsd:\n{seen[0]}\n--- ours:\n{seen[1]}");
    }

    static async Task<string> ListenAsync(DifferentialDaemon daemon, string address)
    {
        var port = address.Contains("port=nbd", StringComparison.Ordinal) ? 10809 : FreePort();
        var options = "addr.type=inet," + string.Join(',', address.Replace("PORT", $"{port}", StringComparison.Ordinal).Split(',').Select(o => "addr." + o));
        var start = new ProcessStartInfo(daemon.Program) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in (string[])[.. daemon.Prefix, "--blockdev", "driver=null-co,node-name=n0,size=1048576",
            "--nbd-server", options, "--export", "type=nbd,id=e,node-name=n0,name=disk"])
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            for (var wait = 0; wait < 500; wait++)
            {
                if (process.HasExited)
                {
                    // The refusal, after the program's own name.
                    var error = (await stderr).Trim();
                    return $"exit {process.ExitCode}: {error[(error.IndexOf(": ", StringComparison.Ordinal) + 2)..]}".Replace($"{port}", "PORT", StringComparison.Ordinal);
                }

                var listening = await ListeningAsync(port);
                if (listening.Count > 0)
                {
                    // Both daemons bind all their sockets before they serve: one more look finds them all.
                    await Task.Delay(200);
                    listening = await ListeningAsync(port);
                    return $"listens on {string.Join(' ', listening)}; over 127.0.0.1: {await ReachesAsync($"nbd://127.0.0.1:{port}/disk")}; " +
                        $"over ::1: {await ReachesAsync($"nbd://[::1]:{port}/disk")}";
                }

                await Task.Delay(20);
            }

            return "neither listened nor exited in 10 s";
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }

            await process.WaitForExitAsync();
        }
    }

    /// <summary>The local addresses <c>ss</c> lists as listening on <paramref name="port"/>, the port left out.</summary>
    static async Task<List<string>> ListeningAsync(int port)
    {
        var ss = await ExternalTool.RunAsync("ss", ["-ltnH", $"sport = :{port}"]);
        return [.. ss.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[3])
            .Select(local => local[..local.LastIndexOf(':')])
            .Order(StringComparer.Ordinal)];
    }

    static async Task<string> ReachesAsync(string uri) =>
        (await ExternalTool.RunAsync("nbdinfo", ["--size", uri])).ExitCode == 0 ? "served" : "refused";

    static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
        probe.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
