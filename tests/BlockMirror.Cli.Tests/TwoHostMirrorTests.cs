using System.Globalization;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Mirrors across two hosts for real (issue 16): the source daemon on host A mirrors a qcow2 under a live
/// writer onto the destination daemon's NBD export on host B, over the veth link with a 10 ms round trip (a
/// delaying relay on A in front of B's port) and a tbf rate limit; READY, complete, and the destination image
/// equals the source with everything the writer wrote (qemu-img compare).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class TwoHostMirrorTests : IDisposable
{
    const int NbdPort = 10809;
    const long ImageBytes = 32L << 20;

    readonly TempDirectory _dir = new("blockmirror-two-hosts-");

    public void Dispose() => _dir.Dispose();

    static DifferentialDaemon Kind(string name) => name == "qsd" ? DifferentialDaemon.Qsd() : DifferentialDaemon.Ours();

    [SkippableTheory]
    [InlineData("qsd", "ours")]
    [InlineData("qsd", "qsd")]
    [InlineData("ours", "ours")]
    [InlineData("ours", "qsd")]
    public async Task A_mirror_under_a_live_writer_reaches_the_other_host_whole(string source, string destination)
    {
        await using var hosts = TwoHosts.Create(rate: "256mbit");
        var sourceImage = await ImageRecipes.Qcow2Async(_dir.Path, "source.qcow2", $"{ImageBytes}", [],
            ["write -P 0x5a 0 20M", "write -P 0xa5 28M 4M"]);
        var destinationImage = await ImageRecipes.Qcow2Async(_dir.Path, "destination.qcow2", $"{ImageBytes}", [], []);

        var target = await StartDestinationAsync(hosts, Kind(destination), destinationImage);
        var relay = await hosts.RelayToBAsync(NbdPort);
        var sourceExport = _dir.File("source-nbd.sock");
        var origin = await hosts.StartAsync(onA: true, Kind(source), _dir.Path, "source", [
            "--blockdev", $"driver=file,node-name=src-file,filename={sourceImage}",
            "--blockdev", "driver=qcow2,node-name=src,file=src-file",
            "--nbd-server", $"addr.type=unix,addr.path={sourceExport}",
            "--export", "type=nbd,id=src-exp,node-name=src,name=disk,writable=on",
        ]);
        var qmp = origin.Qmp;
        await qmp.ExecuteAsync("blockdev-add", new JsonObject
        {
            ["driver"] = "nbd", ["node-name"] = "tgt", ["export"] = DifferentialDaemon.ExportName,
            ["server"] = new JsonObject { ["type"] = "inet", ["host"] = relay.EndPoint.Address.ToString(), ["port"] = $"{relay.EndPoint.Port}" },
        });

        // Slow at first, so the writer's first batches land while the bulk copy runs; then flat out to READY.
        await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full", ["speed"] = 4L << 20 });
        var writer = new LiveWriter($"nbd+unix:///disk?socket={sourceExport}", seed: 16);
        await writer.WriteBatchesAsync(3);
        Assert.Equal("running", await JobStatusAsync(qmp));
        await qmp.ExecuteAsync("block-job-set-speed", new JsonObject { ["device"] = "m", ["speed"] = 0 });
        await qmp.WaitEventAsync("BLOCK_JOB_READY", timeout: TimeSpan.FromSeconds(40));
        await writer.WriteBatchesAsync(2);
        await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m" });
        var completed = await qmp.WaitEventAsync("BLOCK_JOB_COMPLETED", timeout: TimeSpan.FromSeconds(30));

        Assert.Null(completed["data"]!["error"]);
        Assert.True(relay.Connections > 0, "the mirror's connection did not go through the relay");
        await origin.QuitAsync();
        await target.QuitAsync();
        await QemuImages.AssertIdenticalAsync(sourceImage, destinationImage, "qcow2", "qcow2");
        // The writer's last batch, read back from the destination: the comparison is not of two untouched images.
        await ImageRecipes.QemuIoAsync(destinationImage, "qcow2", writer.ReadBackLastBatch());
    }

    /// <summary>The destination daemon on host B: the image as a qcow2 node, exported writable on B's address.</summary>
    Task<HostDaemon> StartDestinationAsync(TwoHosts hosts, DifferentialDaemon kind, string image) =>
        hosts.StartAsync(onA: false, kind, _dir.Path, "destination", [
            "--blockdev", $"driver=file,node-name=dst-file,filename={image}",
            "--blockdev", "driver=qcow2,node-name=dst,file=dst-file",
            "--nbd-server", $"addr.type=inet,addr.host={NetworkNamespaces.AddressB},addr.port={NbdPort}",
            "--export", $"type=nbd,id=exp0,node-name=dst,name={DifferentialDaemon.ExportName},writable=on",
        ]);

    static async Task<string?> JobStatusAsync(QmpClient qmp) =>
        (string?)(await qmp.ExecuteAsync("query-jobs"))!.AsArray().Single()!["status"];
}

/// <summary>
/// A guest's writes through the source's NBD export, in batches (one qemu-io run each): writes of 4 to 256
/// KiB at seeded random places, each batch with its own pattern byte, so a write that is lost shows.
/// </summary>
sealed class LiveWriter(string uri, int seed)
{
    readonly Random _random = new(seed);
    List<string> _lastBatch = [];
    int _batches;

    public async Task WriteBatchesAsync(int count)
    {
        for (var i = 0; i < count; i++)
        {
            var pattern = 0x10 + _batches++;
            _lastBatch = [];
            for (var w = 0; w < 16; w++)
            {
                var length = 4096 << _random.Next(7);
                var offset = _random.NextInt64(0, ((32L << 20) - length) / 4096) * 4096;
                _lastBatch.Add(string.Create(CultureInfo.InvariantCulture, $"{offset} {length}"));
            }

            await ImageRecipes.QemuIoAsync(uri, "raw", _lastBatch.Select(w => $"write -P 0x{pattern:x2} {w}"));
            _lastBatch = [.. _lastBatch.Select(w => $"read -P 0x{pattern:x2} {w}")];
        }
    }

    /// <summary>qemu-io commands that check the last batch's writes (those not overwritten by a later write of the same batch).</summary>
    public IEnumerable<string> ReadBackLastBatch() => _lastBatch;
}
