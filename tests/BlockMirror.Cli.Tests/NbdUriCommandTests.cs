using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The image commands on NBD URIs, side by side with qemu-img 7.2 on the same exports: qemu-nbd over a Unix
/// socket and over TCP, and qemu-storage-daemon's and <c>blockmirror serve</c>'s exports, named in every form
/// QEMU reads (nbd://, nbd+tcp://, nbd+unix://, the legacy nbd:unix:/nbd:HOST:PORT, percent-encoded). And
/// <c>blockmirror mirror</c> onto an export: written through, never created, truncated or removed.
/// </summary>
public sealed class NbdUriCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-nbd-uri-");

    public void Dispose() => _dir.Dispose();

    /// <summary>A raw image, and a qcow2 served as its bytes (qemu-nbd -f raw): a client must probe it as qcow2 through the export.</summary>
    public static TheoryData<string> Served => new() { "raw", "written" };

    /// <summary>Every spelling of the two exports' addresses.</summary>
    static string[] Names(QemuNbdExport unix, QemuNbdExport tcp) =>
    [
        unix.Uri, tcp.Uri, $"nbd+tcp://127.0.0.1:{tcp.Port}/disk", $"nbd+unix:///d%69sk?socket={unix.Socket}",
        $"nbd:unix:{unix.Socket}:exportname=disk", $"nbd:127.0.0.1:{tcp.Port}:exportname=disk",
    ];

    /// <summary>qemu-img's and blockmirror's runs of one command on one name: same exit code, output and (but for the program's name) errors.</summary>
    static async Task AssertSameAsync(string context, params string[] arguments)
    {
        var runs = await SideBySide.RunAsync(context, null, arguments);
        SideBySide.AssertSameOutput(runs);
        Assert.True(runs.Qemu.StandardError.Replace("qemu-img: ", $"blockmirror {arguments[0]}: ", StringComparison.Ordinal) == runs.Ours.StandardError,
            $"stderr differs: {runs}");
    }

    /// <summary>Every command on the export's name (or, <paramref name="full"/> false, the one that shows the name); run side by side, all at once.</summary>
    static Task AssertToolsAgreeAsync(string context, string name, string local, bool full = true) =>
        Task.WhenAll(new string[][]
        {
            ["info", name], ["info", "--output=json", name], ["map", name], ["map", "--output=json", name], ["compare", name, local], ["compare", local, name],
        }.Take(full ? 6 : 1).Select(arguments => AssertSameAsync(context, arguments)));

    [SkippableTheory]
    [MemberData(nameof(Served))]
    public async Task Info_map_and_compare_on_qemu_nbd_exports_print_what_qemu_img_prints(string recipe)
    {
        var path = await ImageRecipes.BuildAsync(recipe, _dir);
        await using var unix = await QemuNbdExport.StartAsync(path, "disk");
        await using var tcp = await QemuNbdExport.StartAsync(path, "disk", tcp: true);
        var names = Names(unix, tcp);
        foreach (var name in names)
        {
            // The two URIs in full; the other spellings for the name they give the image.
            await AssertToolsAgreeAsync($"{ImageRecipes.Describe(recipe)}, served by qemu-nbd as {name}", name, path, full: name == unix.Uri || name == tcp.Uri);
        }

        // Two exports of one image compare equal over the two transports.
        await AssertSameAsync(recipe, "compare", unix.Uri, tcp.Uri);
    }

    /// <summary>
    /// compare on an export whose reads fail (nbdkit's error filter, EIO on every read): the same exit code (4) and
    /// the same line as qemu-img, never "identical". The data plugin gives the export allocated extents, so both tools
    /// must read them.
    /// </summary>
    [SkippableFact]
    public async Task Compare_on_an_export_whose_reads_fail_exits_4_with_qemu_img_s_line()
    {
        ExternalTool.Require("nbdkit");
        var local = _dir.File("zero.raw");
        await using (var file = File.Create(local))
        {
            file.SetLength(4 << 20);
        }

        await using var failing = await NbdServerProcess.NbdkitAsync(_dir.File("failing.sock"), "--filter=error", "data", "1 2 3 @1048576 4 5 6", "size=4M",
            "error-pread=EIO", "error-pread-rate=1");
        foreach (var arguments in new[] { new[] { "compare", "-f", "raw", "-F", "raw", local, failing.Uri }, ["compare", "-f", "raw", "-F", "raw", failing.Uri, local] })
        {
            var runs = await SideBySide.RunAsync("an export whose reads fail", null, arguments);
            Assert.True(runs.Qemu.ExitCode == 4, runs.ToString());
            await AssertSameAsync("an export whose reads fail", arguments);
        }
    }

    /// <summary>A URI without an export asks for the default one (""), and the image is named without one.</summary>
    [SkippableFact]
    public async Task The_default_export_is_opened_and_named_as_qemu_img_names_it()
    {
        var path = await ImageRecipes.BuildAsync("raw", _dir);
        await using var unix = await QemuNbdExport.StartAsync(path, "");
        await using var tcp = await QemuNbdExport.StartAsync(path, "", tcp: true);
        await Task.WhenAll(new[]
        {
            $"nbd+unix://?socket={unix.Socket}", $"nbd+unix:///?socket={unix.Socket}", $"nbd:unix:{unix.Socket}", $"nbd://127.0.0.1:{tcp.Port}",
            $"nbd://127.0.0.1:{tcp.Port}/", $"nbd:127.0.0.1:{tcp.Port}",
        }.Select(name => AssertSameAsync("the raw recipe, qemu-nbd's default export", "info", name)));
    }

    [SkippableFact]
    public async Task Info_map_and_compare_on_daemon_exports_print_what_qemu_img_prints()
    {
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = Path.Combine(_dir.Path, daemon.Name);
            Directory.CreateDirectory(dir);
            var path = await ImageRecipes.Qcow2Async(dir, "disk.qcow2", "4M", [], ["write -P 0x11 0 64k", "write -z 1M 64k", "write -P 0x22 3M 4k"]);
            await daemon.RunAsync(dir, ["--blockdev", $"driver=qcow2,node-name=disk,file.driver=file,file.filename={path}"], "disk",
                async (qmp, uri) => await AssertToolsAgreeAsync($"{daemon.Name}'s export of a qcow2 node", uri, path));
        }
    }

    /// <summary>
    /// A backing file named by an NBD URI in a local overlay's header is opened through its export; an image
    /// on an export whose backing name is relative has no directory for it (QEMU: "Cannot generate a base
    /// directory for NBD nodes", and info says it cannot determine the path).
    /// </summary>
    [SkippableFact]
    public async Task Backing_files_over_nbd_read_as_qemu_img_reads_them()
    {
        var dir = _dir.Path;
        var basePath = await ImageRecipes.Qcow2Async(dir, "base.qcow2", "4M", [], ["write -P 0x11 0 64k"]);
        var relative = await ImageRecipes.Qcow2Async(dir, "relative.qcow2", null, ["-b", "base.qcow2", "-F", "qcow2"], ["write -P 0x22 1M 64k"]);
        await using var baseExport = await QemuNbdExport.StartAsync(basePath, "base");
        await using var relativeExport = await QemuNbdExport.StartAsync(relative, "relative");
        var overlay = await ImageRecipes.Qcow2Async(dir, "overlay.qcow2", "4M", ["-u", "-b", baseExport.Uri, "-F", "qcow2"], []);
        await ImageRecipes.QemuIoAsync(overlay, "qcow2", ["write -P 0x33 2M 64k"]);

        foreach (var arguments in new string[][]
        {
            ["info", "--backing-chain", overlay], ["info", "--backing-chain", "--output=json", overlay], ["map", overlay], ["map", "--output=json", overlay],
            ["info", relativeExport.Uri], ["info", "--output=json", relativeExport.Uri], ["map", relativeExport.Uri],
        })
        {
            await AssertSameAsync("base.qcow2 over qemu-nbd; overlay.qcow2 backed by its URI; relative.qcow2 (backing 'base.qcow2') over qemu-nbd", arguments);
        }
    }

    /// <summary>Names QEMU refuses before it connects, refused in its words by each command.</summary>
    [SkippableFact]
    public async Task Refused_names_are_refused_as_qemu_img_refuses_them()
    {
        var local = await ImageRecipes.BuildAsync("raw", _dir);
        // The parser's refusals are all checked against qemu-img in the NBD tests; here, how each command says them.
        string[] names = ["nbd://h:99999/disk", "foo:bar", "nbd+vsock://1/disk", "nbd:", "nbd:foo",
            "nbd+unix:///disk?socket=/tmp/blockmirror-nobody.sock"];
        await Task.WhenAll(names.Select(name => AssertSameAsync(name, "info", name)));
        await Task.WhenAll(names.Take(3).SelectMany(name => new[] { AssertSameAsync(name, "map", name), AssertSameAsync(name, "compare", name, local) }));
    }

    /// <summary>
    /// Pinned difference: qemu-img 7.2 knows no <c>nbds</c> protocol; here an <c>nbds://</c> name is read (libnbd's
    /// form) and, without <c>tls-creds</c> or <c>tls-certificates</c>, takes QEMU's default x509 directory, whose
    /// missing CA certificate is named before anything is connected to.
    /// </summary>
    [SkippableFact]
    public async Task An_nbds_name_qemu_img_does_not_know_is_read_here_and_its_missing_certificates_named()
    {
        Skip.If(File.Exists("/etc/pki/qemu/ca-cert.pem"), "this machine has QEMU's default x509 credentials");
        foreach (var name in new[] { "nbds://127.0.0.1/disk", "nbds+unix:///disk?socket=/tmp/x.sock" })
        {
            var runs = await SideBySide.RunAsync(name, null, ["info", name]);
            Assert.Equal((1, $"qemu-img: Could not open '{name}': Unknown protocol '{name[..name.IndexOf(':')]}'\n"), (runs.Qemu.ExitCode, runs.Qemu.StandardError));
            Assert.Equal(1, runs.Ours.ExitCode);
            Assert.StartsWith($"blockmirror info: Could not open '{name}': TLS certificates for nbds: ", runs.Ours.StandardError, StringComparison.Ordinal);
            Assert.Contains("/etc/pki/qemu/ca-cert.pem", runs.Ours.StandardError, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// create takes local files only: an unknown prefix is qemu-img's refusal, and an export is not formatted
    /// (qemu-img would clear its first sector or write a qcow2 over it; pinned difference). Nothing appears.
    /// </summary>
    [SkippableFact]
    public async Task Create_refuses_names_that_are_not_local_files_and_makes_nothing()
    {
        var work = Directory.CreateDirectory(Path.Combine(_dir.Path, "work")).FullName;
        var qemu = await ExternalTool.RunAsync("qemu-img", ["create", "-f", "raw", "foo:bar", "1M"], workingDirectory: work);
        var ours = await BlockMirrorCli.RunAsync(["create", "-f", "raw", "foo:bar", "1M"], work);
        Assert.Equal((1, "qemu-img: foo:bar: Unknown protocol 'foo'\n"), (qemu.ExitCode, qemu.StandardError));
        Assert.Equal((1, "blockmirror create: foo:bar: Unknown protocol 'foo'\n"), (ours.ExitCode, ours.StandardError));

        var target = Path.Combine(_dir.Path, "target.raw");
        await QemuImages.CreateAsync(target, "1M", "write -P 0x77 0 1M");
        await using (var export = await QemuNbdExport.StartAsync(target, "disk"))
        {
            foreach (var name in new[] { export.Uri, "nbd:foo", "nbd://h:99999/x" })
            {
                var refused = await BlockMirrorCli.RunAsync(["create", "-f", "qcow2", name, "1M"], work);
                Assert.Equal(1, refused.ExitCode);
                SideBySide.AssertOneErrorLine(refused, "create", name);
            }
        }

        Assert.Empty(Directory.EnumerateFileSystemEntries(work));
        Assert.Equal(Enumerable.Repeat((byte)0x77, 1 << 20), await File.ReadAllBytesAsync(target));
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Mirror_onto_an_nbd_uri_writes_the_export_and_creates_nothing(bool tcp)
    {
        var source = await ImageRecipes.BuildAsync("written", _dir);
        var target = Path.Combine(_dir.Path, "target.raw");
        await QemuImages.CreateAsync(target, "4M", "write -P 0x77 0 4M");
        var work = Directory.CreateDirectory(Path.Combine(_dir.Path, "work")).FullName;
        await using (var export = await QemuNbdExport.StartAsync(target, "disk", tcp))
        {
            var result = await BlockMirrorCli.RunAsync(["mirror", source, export.Uri], work);
            Assert.True(result.ExitCode == 0, result.ToString());
            Assert.Contains($"to {export.Uri}", result.StandardOutput, StringComparison.Ordinal);
        }

        Assert.Empty(Directory.EnumerateFileSystemEntries(work));
        Assert.Equal(4 << 20, new FileInfo(target).Length);
        await QemuImages.AssertIdenticalAsync(source, target, expectedFormat: "qcow2");
    }

    [SkippableFact]
    public async Task Mirror_from_an_nbd_uri_probes_its_format_through_the_export()
    {
        var source = await ImageRecipes.BuildAsync("written", _dir);
        var target = Path.Combine(_dir.Path, "copy.raw");
        await using (var export = await QemuNbdExport.StartAsync(source, "disk"))
        {
            var result = await BlockMirrorCli.RunAsync("mirror", export.Uri, target);
            Assert.True(result.ExitCode == 0, result.ToString());
        }

        await QemuImages.AssertIdenticalAsync(source, target, expectedFormat: "qcow2");
    }

    [SkippableFact]
    public async Task Mirror_onto_an_export_of_another_size_is_refused_before_a_byte_is_written()
    {
        var source = await ImageRecipes.BuildAsync("written", _dir);
        var target = Path.Combine(_dir.Path, "target.raw");
        await QemuImages.CreateAsync(target, "8M", "write -P 0x77 0 8M");
        var before = QemuImages.Fingerprint(target);
        await using (var export = await QemuNbdExport.StartAsync(target, "disk"))
        {
            var result = await BlockMirrorCli.RunAsync("mirror", source, export.Uri);
            Assert.Equal(1, result.ExitCode);
            SideBySide.AssertOneErrorLine(result, "mirror", "Source and target image have different sizes");
        }

        Assert.Equal(before, QemuImages.Fingerprint(target));
    }

    [SkippableFact]
    public async Task Mirror_onto_a_uri_nobody_serves_fails_and_creates_nothing()
    {
        var source = await ImageRecipes.BuildAsync("written", _dir);
        var work = Directory.CreateDirectory(Path.Combine(_dir.Path, "work")).FullName;
        var uri = $"nbd+unix:///disk?socket={work}/nobody.sock";
        var result = await BlockMirrorCli.RunAsync(["mirror", source, uri], work);
        Assert.Equal(1, result.ExitCode);
        SideBySide.AssertOneErrorLine(result, "mirror", $"Could not open '{uri}': Failed to connect to '{work}/nobody.sock': No such file or directory");
        Assert.Empty(Directory.EnumerateFileSystemEntries(work));
    }
}
