using System.Text.Json.Nodes;
using BlockMirror.Block.Interop;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Paths that are not regular files, given where an image is expected, to both tools. The file driver refuses
/// them in QEMU's words (<c>'file' driver requires '...' to be a regular file</c>); QEMU serves block and
/// character devices with its host_device and host_cdrom drivers, which BlockMirror does not have. Before, a
/// block device opened as a file of 0 bytes (a mirror from one "succeeded" with 0 bytes copied), and a creation
/// on a device, a FIFO or /dev/null renamed a new regular file into the node's place. A symbolic link is
/// followed to the file it names, as QEMU's open follows it, and stays a link.
/// </summary>
public sealed class NonRegularFileTests : IDisposable
{
    readonly TempDirectory _dir = new("bm-non-regular-");

    public void Dispose() => _dir.Dispose();

    /// <summary>A FIFO and, as root, a character device node of the test's own (/dev/null's numbers), in <paramref name="dir"/>.</summary>
    static async Task<string[]> MakeNodesAsync(string dir)
    {
        ExternalTool.RequireRoot("a character device node is made with mknod");
        Directory.CreateDirectory(dir);
        await ExternalTool.RunCheckedAsync("mkfifo", $"{dir}/fifo");
        await ExternalTool.RunCheckedAsync("mknod", $"{dir}/chardev", "c", "1", "3");
        return [$"{dir}/fifo", $"{dir}/chardev"];
    }

    [SkippableFact]
    public async Task Blockdev_add_and_drive_mirror_refuse_what_is_not_a_regular_file_and_leave_it_in_place()
    {
        var answers = new List<List<string>>();
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Path.Combine(_dir.Path, daemon.Name);
            var nodes = await MakeNodesAsync(dir);
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", $"{dir}/src.raw", "2M");
            var seen = new List<string>();
            await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=src,filename={dir}/src.raw"], "src", async (qmp, _) =>
            {
                foreach (var node in nodes)
                {
                    var add = await qmp.CommandAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "x", ["filename"] = node });
                    seen.Add($"blockdev-add {Path.GetFileName(node)}: {Describe(add, dir)}");
                    foreach (var format in new[] { "raw", "qcow2" })
                    {
                        var mirror = await qmp.CommandAsync("drive-mirror", new JsonObject
                        {
                            ["job-id"] = "job0", ["device"] = "src", ["target"] = node, ["format"] = format, ["sync"] = "full", ["mode"] = "absolute-paths",
                        });
                        seen.Add($"drive-mirror {format} {Path.GetFileName(node)}: {Describe(mirror, dir)}");
                    }
                }
            });

            Assert.Equal(UnixFileKind.Fifo, FileStatus.KindOf(nodes[0]));
            Assert.Equal(UnixFileKind.CharacterDevice, FileStatus.KindOf(nodes[1]));
            answers.Add(seen);
        }

        string[] refusal = ["blockdev-add fifo: 'file' driver requires 'DIR/fifo' to be a regular file", "blockdev-add chardev: 'file' driver requires 'DIR/chardev' to be a regular file"];
        Assert.Equal(refusal, answers[0].Where(a => a.StartsWith("blockdev-add", StringComparison.Ordinal)));
        Assert.Equal(refusal, answers[1].Where(a => a.StartsWith("blockdev-add", StringComparison.Ordinal)));

        // A deliberate difference: QEMU tries the creation on the node (a FIFO cannot be resized; its qcow2 header
        // written into the character device reads back as zeroes), ours refuses it before, in the open's words.
        Assert.Equal(
        [
            "drive-mirror raw fifo: Could not resize file: Invalid argument", "drive-mirror qcow2 fifo: Could not resize file: Invalid argument",
            "drive-mirror raw chardev: Cannot grow device files", "drive-mirror qcow2 chardev: Image is not in qcow2 format",
        ], answers[0].Where(a => a.StartsWith("drive-mirror", StringComparison.Ordinal)));
        Assert.Equal(
        [
            "drive-mirror raw fifo: 'file' driver requires 'DIR/fifo' to be a regular file", "drive-mirror qcow2 fifo: 'file' driver requires 'DIR/fifo' to be a regular file",
            "drive-mirror raw chardev: 'file' driver requires 'DIR/chardev' to be a regular file", "drive-mirror qcow2 chardev: 'file' driver requires 'DIR/chardev' to be a regular file",
        ], answers[1].Where(a => a.StartsWith("drive-mirror", StringComparison.Ordinal)));
    }

    static string Describe(JsonObject reply, string dir) =>
        reply["error"] is { } error ? ((string?)error["desc"] ?? "").Replace(dir, "DIR", StringComparison.Ordinal) : "ok";

    [SkippableFact]
    public async Task Drive_mirror_onto_a_symbolic_link_writes_the_file_it_names_and_keeps_the_link_as_qemu_storage_daemon_does()
    {
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Path.Combine(_dir.Path, daemon.Name);
            Directory.CreateDirectory(Path.Combine(dir, "images"));
            await ImageRecipes.Qcow2Async(dir, "src.qcow2", "2M", [], ["write -P 0x5a 0 2M"]);
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", $"{dir}/images/old.raw", "1M");
            File.CreateSymbolicLink($"{dir}/target.raw", "images/old.raw");
            string[] blockdevs = ["--blockdev", $"driver=file,node-name=src-file,filename={dir}/src.qcow2", "--blockdev", "driver=qcow2,node-name=src,file=src-file"];
            await daemon.RunAsync(dir, blockdevs, "src", async (qmp, _) =>
            {
                await qmp.ExecuteAsync("drive-mirror", new JsonObject
                {
                    ["job-id"] = "job0", ["device"] = "src", ["target"] = $"{dir}/target.raw", ["format"] = "raw", ["sync"] = "full", ["mode"] = "absolute-paths",
                });
                await qmp.WaitEventAsync("BLOCK_JOB_READY");
                await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = "job0" });
                await DifferentialDaemon.WaitJobGoneAsync(qmp);
            });

            Assert.Equal(UnixFileKind.SymbolicLink, LinkKind($"{dir}/target.raw"));
            await QemuImages.AssertIdenticalAsync($"{dir}/src.qcow2", $"{dir}/images/old.raw", "qcow2", "raw");
        }
    }

    static UnixFileKind? LinkKind(string path) => new FileInfo(path).LinkTarget is null ? FileStatus.KindOf(path) : UnixFileKind.SymbolicLink;

    [SkippableFact]
    public async Task Create_follows_symbolic_links_and_refuses_what_is_not_a_regular_file_as_qemu_img_does()
    {
        var outputs = new Dictionary<string, List<string>>();
        foreach (var tool in new[] { "qemu-img", "blockmirror" })
        {
            var dir = Path.Combine(_dir.Path, tool);
            var nodes = await MakeNodesAsync(dir);
            Directory.CreateDirectory($"{dir}/images");
            Directory.CreateDirectory($"{dir}/links");
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", $"{dir}/images/old.raw", "1M");
            File.CreateSymbolicLink($"{dir}/links/up.qcow2", "../images/old.raw");
            File.CreateSymbolicLink($"{dir}/links/dangling.qcow2", "../images/new.qcow2");
            File.CreateSymbolicLink($"{dir}/loop1", "loop2");
            File.CreateSymbolicLink($"{dir}/loop2", "loop1");

            var seen = outputs[tool] = [];
            foreach (var name in new[] { "links/up.qcow2", "links/dangling.qcow2", "loop1", "fifo", "chardev" })
            {
                var run = await RunCreateAsync(tool, dir, name);
                seen.Add($"{name}: exit {run.ExitCode}: {run.Error.Replace(dir, "DIR", StringComparison.Ordinal)}");
            }

            // Through the links: the files they name are new 2 MiB images, and the links are still links.
            Assert.Equal(UnixFileKind.SymbolicLink, LinkKind($"{dir}/links/up.qcow2"));
            Assert.Equal(UnixFileKind.SymbolicLink, LinkKind($"{dir}/links/dangling.qcow2"));
            foreach (var image in new[] { "old.raw", "new.qcow2" })
            {
                var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "-f", "qcow2", $"{dir}/images/{image}");
                Assert.Contains("virtual size: 2 MiB", info);
            }

            Assert.Equal(UnixFileKind.Fifo, FileStatus.KindOf(nodes[0]));
            Assert.Equal(UnixFileKind.CharacterDevice, FileStatus.KindOf(nodes[1]));
        }

        string[] same = ["links/up.qcow2: exit 0: ", "links/dangling.qcow2: exit 0: ", "loop1: exit 1: loop1: Could not create 'loop1': Too many levels of symbolic links"];
        Assert.Equal(same, outputs["qemu-img"].Take(3));
        Assert.Equal(same, outputs["blockmirror"].Take(3));
        // A deliberate difference, as for drive-mirror above: qemu-img tries, ours refuses before.
        Assert.Equal(["fifo: exit 1: fifo: Could not resize file: Invalid argument", "chardev: exit 1: chardev: Image is not in qcow2 format"], outputs["qemu-img"].Skip(3));
        Assert.Equal(
            ["fifo: exit 1: fifo: 'file' driver requires 'fifo' to be a regular file", "chardev: exit 1: chardev: 'file' driver requires 'chardev' to be a regular file"],
            outputs["blockmirror"].Skip(3));
    }

    /// <summary>Runs <c>create -f qcow2 NAME 2M</c> in <paramref name="dir"/>; the error is the first line after the tool's prefix.</summary>
    static async Task<(int ExitCode, string Error)> RunCreateAsync(string tool, string dir, string name)
    {
        string[] arguments = ["create", "-q", "-f", "qcow2", name, "2M"];
        if (tool == "qemu-img")
        {
            var result = await ExternalTool.RunAsync("qemu-img", arguments, workingDirectory: dir);
            return (result.ExitCode, FirstError(result.StandardError, "qemu-img: "));
        }

        var ours = await BlockMirrorCli.RunAsync(arguments, dir);
        return (ours.ExitCode, FirstError(ours.StandardError, "blockmirror create: "));
    }

    static string FirstError(string stderr, string prefix) =>
        stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault() is { } line && line.StartsWith(prefix, StringComparison.Ordinal) ? line[prefix.Length..] : stderr.Trim();

    [SkippableFact]
    public async Task A_block_device_is_refused_by_every_command_and_left_as_it_was()
    {
        ExternalTool.RequireRoot("a loop device is set up with losetup");
        var backing = _dir.File("backing.img");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", backing, "16M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 16M", backing);
        var device = (await ExternalTool.RunCheckedAsync("losetup", "--find", "--show", backing)).Trim();
        try
        {
            File.CreateSymbolicLink(_dir.File("disk-link"), device);
            var refusal = $"'file' driver requires '{device}' to be a regular file";

            var mirror = await BlockMirrorCli.RunAsync("mirror", device, _dir.File("copy.raw"));
            Assert.Equal(1, mirror.ExitCode);
            Assert.Equal([$"blockmirror mirror: {refusal}"], mirror.ErrorLines);
            Assert.False(File.Exists(_dir.File("copy.raw")), "a mirror from a block device made a target");

            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", _dir.File("source.raw"), "1M");
            var onto = await BlockMirrorCli.RunAsync("mirror", _dir.File("source.raw"), device);
            Assert.Equal([$"blockmirror mirror: {refusal}"], onto.ErrorLines);

            var info = await BlockMirrorCli.RunAsync("info", device);
            Assert.Equal([$"blockmirror info: {refusal}"], info.ErrorLines);

            foreach (var name in new[] { device, _dir.File("disk-link") })
            {
                var create = await BlockMirrorCli.RunAsync("create", "-q", "-f", "qcow2", name, "1M");
                Assert.Equal([$"blockmirror create: {name}: 'file' driver requires '{name}' to be a regular file"], create.ErrorLines);
            }

            // qemu-storage-daemon's file driver refuses it in the same words.
            foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
            {
                var dir = Path.Combine(_dir.Path, daemon.Name);
                Directory.CreateDirectory(dir);
                var add = "";
                await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=src,filename={_dir.File("source.raw")}"], "src", async (qmp, _) =>
                {
                    var reply = await qmp.CommandAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "dev", ["filename"] = device });
                    add = Describe(reply, dir);
                });
                Assert.Equal(refusal, add);
            }

            Assert.Equal(UnixFileKind.BlockDevice, FileStatus.KindOf(device));
            Assert.Equal(UnixFileKind.SymbolicLink, LinkKind(_dir.File("disk-link")));
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "read -P 0x77 0 16M", backing);
        }
        finally
        {
            await ExternalTool.RunAsync("losetup", ["--detach", device]);
        }
    }
}
