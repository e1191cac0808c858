using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>driver=nbd</c> on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>, the same QMP on both: the
/// errors of a blockdev-add that cannot open (a read-only export opened read-write, a missing export, nothing
/// listening, no socket file), the node a good one makes, and mirrors onto an NBD export (qemu-nbd of a new
/// raw file): the target equals the source and stays as sparse as QEMU leaves it.
/// </summary>
public sealed class NbdClientDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-nbd-client-diff-");

    public void Dispose() => _dir.Dispose();

    static JsonObject Nbd(string nodeName, JsonObject server, string export = NbdServerProcess.ExportName, bool readOnly = false)
    {
        var options = new JsonObject { ["driver"] = "nbd", ["node-name"] = nodeName, ["server"] = server, ["export"] = export };
        if (readOnly)
        {
            options["read-only"] = true;
        }

        return options;
    }

    static JsonObject Unix(string path) => new() { ["type"] = "unix", ["path"] = path };

    [SkippableFact]
    public async Task Blockdev_add_of_an_nbd_node_fails_and_succeeds_as_qemu_storage_daemon_does()
    {
        var image = _dir.File("ro.raw");
        await QemuImages.CreateAsync(image, "1M", "write -P 0x5a 0 64k");
        var socket = _dir.File("ro.sock");
        var notASocket = _dir.File("plain-file");
        await File.WriteAllTextAsync(notASocket, "");
        await using var server = await NbdServerProcess.QemuNbdAsync(socket, image, "--read-only");

        JsonObject[] adds =
        [
            Nbd("rw", Unix(socket)),
            Nbd("nope", Unix(socket), export: "nope"),
            Nbd("missing", Unix(_dir.File("missing.sock"))),
            Nbd("notsock", Unix(notASocket)),
            Nbd("refused", new JsonObject { ["type"] = "inet", ["host"] = "127.0.0.1", ["port"] = "1" }),
            Nbd("ro", Unix(socket), readOnly: true),
        ];

        var theirs = await BlockdevAddsAsync(DifferentialDaemon.Qsd(), adds);
        var ours = await BlockdevAddsAsync(DifferentialDaemon.Ours(), adds);

        Assert.Equal(theirs, ours);
        Assert.Equal(
        [
            "rw: GenericError: Could not open image: Permission denied",
            "nope: GenericError: Requested export not available",
            $"missing: GenericError: Failed to connect to '{_dir.File("missing.sock")}': No such file or directory",
            $"notsock: GenericError: Failed to connect to '{notASocket}': Connection refused",
            "refused: GenericError: Failed to connect to '127.0.0.1:1': Connection refused",
            "ro: ok",
            $"ro: nbd ro=True nbd+unix:///disk?socket={socket} 1048576",
        ], ours);
    }

    /// <summary>
    /// <c>multi-conn</c> (a later proposal's option, which qemu-storage-daemon 7.2 lacks: pinned difference): QEMU
    /// refuses the parameter; here 1 to 16 are taken (4 connections to qemu-nbd, which advertises
    /// NBD_FLAG_CAN_MULTI_CONN) and anything else is refused by name. The node is the same either way.
    /// </summary>
    [SkippableFact]
    public async Task Multi_conn_is_refused_by_qemu_storage_daemon_and_taken_here_within_its_bounds()
    {
        var image = _dir.File("mc.raw");
        await QemuImages.CreateAsync(image, "1M", "write -P 0x5a 0 64k");
        var socket = _dir.File("mc.sock");
        await using var server = await NbdServerProcess.QemuNbdAsync(socket, image);
        JsonObject WithMultiConn(string name, JsonNode value)
        {
            var add = Nbd(name, Unix(socket));
            add["multi-conn"] = value;
            return add;
        }

        JsonObject[] adds = [WithMultiConn("four", 4), WithMultiConn("zero", 0), WithMultiConn("many", 17), WithMultiConn("text", "x")];
        var theirs = await BlockdevAddsAsync(DifferentialDaemon.Qsd(), adds);
        var ours = await BlockdevAddsAsync(DifferentialDaemon.Ours(), adds);

        Assert.Equal(
        [
            "four: GenericError: Parameter 'multi-conn' is unexpected",
            "zero: GenericError: Parameter 'multi-conn' is unexpected",
            "many: GenericError: Parameter 'multi-conn' is unexpected",
            "text: GenericError: Parameter 'multi-conn' is unexpected",
        ], theirs);
        Assert.Equal(
        [
            "four: ok",
            "zero: GenericError: Parameter 'multi-conn' must be between 1 and 16, not 0",
            "many: GenericError: Parameter 'multi-conn' must be between 1 and 16, not 17",
            "text: GenericError: Parameter 'multi-conn' expects uint64",
            $"four: nbd ro=False nbd+unix:///disk?socket={socket} 1048576",
        ], ours);
    }

    async Task<List<string>> BlockdevAddsAsync(DifferentialDaemon daemon, JsonObject[] adds)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var results = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var add in adds)
            {
                var reply = await qmp.CommandAsync("blockdev-add", add.DeepClone().AsObject());
                var name = (string)add["node-name"]!;
                results.Add(reply["error"] is { } error ? $"{name}: {(string?)error["class"]}: {(string?)error["desc"]}" : $"{name}: ok");
            }

            var nodes = (await qmp.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
            results.AddRange(nodes.Where(n => (string?)n!["drv"] == "nbd").Select(n =>
                $"{(string?)n!["node-name"]}: nbd ro={(bool?)n["ro"]} {(string?)n["file"]} {(long?)n["image"]!["virtual-size"]}"));
        });
        return results;
    }

    /// <summary>
    /// blockdev-mirror of a 64 MiB qcow2 holding 3 MiB of data (and a written-zero range) onto an NBD node, on
    /// both daemons: the same events, a target equal to the source, and no more of the target allocated than
    /// QEMU allocates (block status over the wire skips the holes). With <c>sync=top</c> the source has a
    /// backing file and only what the top layer holds is copied.
    /// </summary>
    [SkippableTheory]
    [InlineData("full")]
    [InlineData("top")]
    public async Task A_mirror_onto_an_nbd_target_copies_what_qemu_copies_and_keeps_the_holes(string sync)
    {
        var theirs = await MirrorOntoNbdAsync(DifferentialDaemon.Qsd(), sync);
        var ours = await MirrorOntoNbdAsync(DifferentialDaemon.Ours(), sync);

        Assert.Equal(theirs.Events, ours.Events);
        Assert.Equal(DifferentialDaemon.ReadyJobEvents, ours.Events);
        await QemuImages.AssertIdenticalAsync(theirs.Target, ours.Target);
        var ourData = (await QemuImages.MapAsync(ours.Target)).Where(e => e.Data).Sum(e => e.Length);
        var theirData = (await QemuImages.MapAsync(theirs.Target)).Where(e => e.Data).Sum(e => e.Length);
        Assert.True(ourData <= theirData, $"our target has {ourData} bytes of data, qemu-storage-daemon's {theirData}");
        if (sync == "full")
        {
            await QemuImages.AssertIdenticalAsync(ours.Source, ours.Target, "qcow2");
        }
        else
        {
            // Only the top layer came over: the backing file's data is not in the target.
            var result = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", ours.Source, ours.Target]);
            Assert.Equal(1, result.ExitCode);
            var top = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "read -P 0x22 40M 1M", "-c", "read -P 0 0 4M", ours.Target);
            Assert.DoesNotContain("fail", top, StringComparison.OrdinalIgnoreCase);
        }
    }

    async Task<(List<string> Events, string Source, string Target)> MirrorOntoNbdAsync(DifferentialDaemon daemon, string sync)
    {
        var dir = Path.Combine(_dir.Path, $"mirror-{daemon.Name}");
        Directory.CreateDirectory(dir);
        var source = Path.Combine(dir, "src.qcow2");
        if (sync == "top")
        {
            var @base = await ImageRecipes.Qcow2Async(dir, "base.qcow2", "64M", [], ["write -P 0x11 0 4M"]);
            await ImageRecipes.Qcow2Async(dir, "src.qcow2", null, ["-F", "qcow2", "-b", @base], ["write -P 0x22 40M 1M", "write -P 0x33 50M 64k"]);
        }
        else
        {
            await ImageRecipes.Qcow2Async(dir, "src.qcow2", "64M", [],
                ["write -P 0x11 0 1M", "write -P 0x22 20M 1M", "write -z 30M 4M", "write -P 0x33 63M 1M"]);
        }

        var target = Path.Combine(dir, "target.raw");
        await QemuImages.CreateAsync(target, "64M");
        await using var server = await NbdServerProcess.QemuNbdAsync(Path.Combine(dir, "target.sock"), target);
        string[] blockdevs =
        [
            "--blockdev", $"driver=file,node-name=srcfile,filename={source}",
            "--blockdev", "driver=qcow2,node-name=src,file=srcfile",
        ];
        var events = await daemon.RunAsync(dir, blockdevs, "src", async (qmp, _) =>
        {
            await qmp.ExecuteAsync("blockdev-add", Nbd("target", Unix(server.SocketPath)));
            await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "target", ["sync"] = sync });
            await qmp.WaitEventAsync("BLOCK_JOB_READY");
            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m" });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });
        return (events, source, target);
    }
}
