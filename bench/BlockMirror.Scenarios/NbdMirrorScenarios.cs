using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Scenarios;

/// <summary>
/// A mirror onto another host's NBD export (issue 16), the source daemon's NBD client against the network:
/// qemu-storage-daemon and <c>blockmirror serve</c> as the source, alternately, mirroring the same qcow2 onto
/// the same destination (qemu-storage-daemon exporting a new raw file), over (a) a Unix socket and (b) the
/// veth link between two network namespaces, limited to <see cref="LinkRate"/> by tbf, with a 10 ms round trip
/// added by the tests' delaying relay. Measures time to READY and the data rate it means against the link's.
/// blockmirror runs twice per turn, with the NBD client's <c>multi-conn</c> at 1 and at <see cref="MultiConn"/>
/// (qemu-storage-daemon 7.2 has no such option; its destination advertises NBD_FLAG_CAN_MULTI_CONN), each row
/// against the same qemu-storage-daemon runs. Needs root (the namespaces).
/// </summary>
static class NbdMirrorScenarios
{
    const string LinkRate = "1gbit";
    const double LinkMiBPerSecond = 1e9 / 8 / (1 << 20);
    const int NbdPort = 10809;
    const int MultiConn = 4;
    static readonly TimeSpan RoundTrip = TimeSpan.FromMilliseconds(10);

    public static IEnumerable<Row> Mirror(Options options)
    {
        if (!Environment.IsPrivilegedProcess)
        {
            throw new InvalidOperationException("the nbd-mirror scenario makes two network namespaces and needs root");
        }

        var denseSize = options.Quick ? 256L << 20 : 2L << 30;
        var (sparseSize, sparseData) = options.Quick ? (4L << 30, 256L << 20) : (32L << 30, 2L << 30);
        var dense = ImageData.Qcow2(ImageData.Dense(options.DataDirectory, denseSize));
        var sparse = ImageData.Qcow2(ImageData.Sparse(options.DataDirectory, sparseSize, sparseData));
        var rows = new List<Row>();
        foreach (var overLink in new[] { false, true })
        {
            var via = overLink ? $"veth {LinkRate}/s, 10 ms RTT" : "Unix socket";
            rows.AddRange(Run(options, $"dense qcow2 {denseSize >> 20} MiB -> NBD, {via}", dense, denseSize, denseSize, overLink));
            rows.AddRange(Run(options, $"sparse qcow2 {sparseSize >> 30} GiB ({sparseData >> 20} MiB data) -> NBD, {via}", sparse, sparseSize, sparseData, overLink));
        }

        return rows;
    }

    static IEnumerable<Row> Run(Options options, string name, string source, long size, long data, bool overLink)
    {
        // Seconds to READY by source: [0] qemu-storage-daemon, [1] blockmirror multi-conn=1, [2] blockmirror multi-conn=MultiConn.
        var toReady = new[] { new List<double>(), new List<double>(), new List<double>() };
        string[] who = ["qemu-storage-daemon", "blockmirror multi-conn=1", $"blockmirror multi-conn={MultiConn}"];
        for (var pair = 0; pair < options.Pairs; pair++)
        {
            // The order turns each pair, so no source always runs first (a warmer or colder machine).
            for (var turn = 0; turn < 3; turn++)
            {
                var which = (turn + pair) % 3;
                var seconds = RunOnceAsync(options, which > 0, which == 2 ? MultiConn : 1, source, size, overLink).GetAwaiter().GetResult();
                toReady[which].Add(seconds);
                Console.Error.WriteLine($"{name}: pair {pair + 1} turn {turn + 1} done ({who[which]} source: READY {seconds:0.00} s, {data / (double)(1 << 20) / seconds:0.0} MiB/s)");
            }
        }

        List<double> Rate(List<double> seconds) => [.. seconds.Select(s => data / (double)(1 << 20) / s)];
        foreach (var mine in new[] { 1, 2 })
        {
            var row = $"{name}, multi-conn={(mine == 1 ? 1 : MultiConn)}";
            yield return new Row(row, "time to READY", toReady[mine], toReady[0], "s", "<= 0.8", "qemu-storage-daemon (source)");
            yield return new Row(row, "data / time to READY", Rate(toReady[mine]), Rate(toReady[0]), "MiB/s",
                overLink ? string.Create(CultureInfo.InvariantCulture, $"link: {LinkMiBPerSecond:0.#} MiB/s") : null, "qemu-storage-daemon (source)");
        }
    }

    /// <summary>One mirror to READY: returns the seconds from blockdev-mirror to BLOCK_JOB_READY.</summary>
    static async Task<double> RunOnceAsync(Options options, bool mine, int multiConn, string source, long size, bool overLink)
    {
        var directory = options.DataDirectory;
        var target = Path.Combine(directory, "nbd-mirror-target.raw");
        File.Delete(target);
        Runner.Run($"qemu-img create -q -f raw '{target}' {size}");
        var socket = Path.Combine(directory, "nbd-mirror.sock");
        File.Delete(socket);
        Runner.DropCaches();

        using var hosts = NetworkNamespaces.Create(overLink ? LinkRate : null);
        string[] listen = overLink
            ? ["--nbd-server", $"addr.type=inet,addr.host={NetworkNamespaces.AddressB},addr.port={NbdPort}"]
            : ["--nbd-server", $"addr.type=unix,addr.path={socket}"];
        await using var destination = await Daemon.StartAsync(options, ours: false, directory, [
            "--blockdev", $"driver=file,node-name=dst-file,filename={target}",
            "--blockdev", "driver=raw,node-name=dst,file=dst-file",
            .. listen, "--export", "type=nbd,id=exp0,node-name=dst,name=disk,writable=on",
        ], hosts.B, "destination-qmp");
        using var relay = overLink
            ? await DelayingRelay.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), new IPEndPoint(IPAddress.Parse(NetworkNamespaces.AddressB), NbdPort), RoundTrip, hosts.A)
            : null;
        await using var origin = await Daemon.StartAsync(options, mine, directory, [
            "--blockdev", $"driver=file,node-name=src-file,filename={source},cache.direct=on",
            "--blockdev", "driver=qcow2,node-name=src,file=src-file",
        ], hosts.A, "source-qmp");

        var server = relay is null
            ? new JsonObject { ["type"] = "unix", ["path"] = socket }
            : new JsonObject { ["type"] = "inet", ["host"] = relay.EndPoint.Address.ToString(), ["port"] = $"{relay.EndPoint.Port}" };
        var qmp = origin.Qmp;
        var node = new JsonObject { ["driver"] = "nbd", ["node-name"] = "tgt", ["export"] = "disk", ["server"] = server };
        if (multiConn > 1)
        {
            node["multi-conn"] = multiConn;
        }

        await qmp.ExecuteAsync("blockdev-add", node);
        var clock = Stopwatch.StartNew();
        await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" });
        try
        {
            await qmp.WaitEventAsync("BLOCK_JOB_READY", timeout: TimeSpan.FromMinutes(10));
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidOperationException(await origin.ExitReportAsync(), e);
        }

        var seconds = clock.Elapsed.TotalSeconds;
        // READY is what is measured; the copy is left unswitched (a soft cancel in READY), then both quit.
        await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "m" });
        await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "null", TimeSpan.FromMinutes(1));
        return seconds;
    }
}
