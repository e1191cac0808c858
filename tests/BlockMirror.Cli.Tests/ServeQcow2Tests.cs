using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// qcow2 in the daemon: a qcow2 overlay given on the command line and exported over NBD takes qemu-io's
/// writes; blockdev-add opens qcow2 with its backing chain, without it (<c>"backing": null</c>), or over a
/// named node; drive-mirror copies it into a new qcow2 image. qemu-img checks every image afterwards.
/// </summary>
public sealed class ServeQcow2Tests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-serve-qcow2-");

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task A_qcow2_overlay_served_over_nbd_takes_writes_opens_every_way_and_mirrors_to_a_new_qcow2()
    {
        ExternalTool.Require("qemu-io");
        var basePath = _dir.File("base.qcow2");
        var overlay = _dir.File("overlay.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", basePath, "8M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4M", basePath);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay);

        var socket = _dir.File("qmp.sock");
        var nbd = _dir.File("nbd.sock");
        using var daemon = Process.Start(BlockMirrorCli.StartInfo(
        [
            "serve",
            "--blockdev", $"driver=qcow2,node-name=disk,file.driver=file,file.filename={overlay}",
            "--chardev", $"socket,id=mon0,path={socket},server=on,wait=off", "--monitor", "chardev=mon0",
            "--nbd-server", $"addr.type=unix,addr.path={nbd}",
            "--export", "type=nbd,id=exp0,node-name=disk,name=disk,writable=on",
        ]))!;
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            await using var qmp = await QmpClient.ConnectAsync(socket);
            var uri = $"nbd+unix:///disk?socket={nbd}";
            var written = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw",
                "-c", "read -P 0x11 0 4M", "-c", "write -P 0x22 1M 64k", "-c", "write -z 2M 512k", "-c", "write -P 0x33 6M 4k", uri);
            Assert.DoesNotContain("Pattern verification failed", written);

            var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
            var disk = nodes.Single(n => (string?)n!["node-name"] == "disk")!;
            Assert.Equal("qcow2", (string?)disk["drv"]);
            Assert.Equal(1, (int)disk["backing_file_depth"]!);

            // The same overlay opened again: without a backing file the data written to the base is not there.
            // 'disk' holds the overlay writable, and its lock refuses a second opening (as QEMU's does): these
            // take no lock.
            await qmp.ExecuteAsync("blockdev-add", new JsonObject
            {
                ["driver"] = "qcow2", ["node-name"] = "alone", ["read-only"] = true, ["backing"] = null,
                ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = overlay, ["read-only"] = true, ["locking"] = "off" },
            });
            await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "base-file", ["filename"] = basePath, ["read-only"] = true });
            await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "qcow2", ["node-name"] = "base", ["file"] = "base-file", ["read-only"] = true });
            await qmp.ExecuteAsync("blockdev-add", new JsonObject
            {
                ["driver"] = "qcow2", ["node-name"] = "over-named", ["read-only"] = true, ["backing"] = "base",
                ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = overlay, ["read-only"] = true, ["locking"] = "off" },
            });
            nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
            Assert.Equal(0, (int)nodes.Single(n => (string?)n!["node-name"] == "alone")!["backing_file_depth"]!);
            Assert.Equal(1, (int)nodes.Single(n => (string?)n!["node-name"] == "over-named")!["backing_file_depth"]!);

            // A bad backing reference is refused by name and adds nothing.
            var bad = await qmp.CommandAsync("blockdev-add", new JsonObject
            {
                ["driver"] = "qcow2", ["node-name"] = "broken", ["backing"] = "nope",
                ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = overlay, ["locking"] = "off" },
            });
            Assert.Contains("nope", bad["error"]!["desc"]!.ToString());

            var copy = _dir.File("copy.qcow2");
            await qmp.ExecuteAsync("drive-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "disk", ["target"] = copy, ["sync"] = "full", ["format"] = "qcow2" });
            await qmp.WaitEventAsync("BLOCK_JOB_READY");
            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == "null");
            await qmp.ExecuteAsync("quit");
            Assert.True(daemon.WaitForExit(30_000), "the daemon did not exit after quit");
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

        foreach (var image in new[] { overlay, _dir.File("copy.qcow2") })
        {
            var check = await ExternalTool.RunCheckedAsync("qemu-img", "check", image);
            Assert.Contains("No errors were found on the image.", check);
        }

        // The overlay holds the writes over the base; the mirror's copy (no backing file) holds the same guest view.
        var verify = await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-r",
            "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 64k", "-c", "read -P 0 2M 512k", "-c", "read -P 0x33 6M 4k", "-c", "read -P 0 7M 1M", overlay);
        Assert.DoesNotContain("Pattern verification failed", verify);
        await ExternalTool.RunCheckedAsync("qemu-img", "compare", overlay, _dir.File("copy.qcow2"));
        var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", _dir.File("copy.qcow2"));
        Assert.DoesNotContain("backing-filename", info);
    }
}
