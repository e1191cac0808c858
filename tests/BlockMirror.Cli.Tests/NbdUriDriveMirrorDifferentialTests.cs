using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// drive-mirror onto an NBD URI (an export of qemu-nbd), run unchanged on qemu-storage-daemon 7.2 and on
/// <c>blockmirror serve</c>: <c>mode=existing</c> writes into the export; <c>absolute-paths</c> makes a new
/// image on it as QEMU does (raw: its first sector cleared; qcow2: a new qcow2 at its start); names and
/// exports QEMU refuses are refused in its words. Two differences are deliberate and pinned here: where QEMU
/// writes before it fails (a qcow2 header on an export too small for the image, the first sector of a raw
/// export of another size than the source), nothing is written.
/// </summary>
public sealed class NbdUriDriveMirrorDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-nbd-uri-mirror-");

    public void Dispose() => _dir.Dispose();

    static DifferentialDaemon[] Daemons() => [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];

    string DirFor(DifferentialDaemon daemon) => Directory.CreateDirectory(Path.Combine(_dir.Path, daemon.Name)).FullName;

    static string[] SourceNode(string dir) => ["--blockdev", $"driver=qcow2,node-name=src,file.driver=file,file.filename={dir}/src.qcow2"];

    /// <summary>A 4 MiB qcow2 source with data in two places, and a raw export target of <paramref name="size"/> full of 0x77.</summary>
    static async Task<string> PrepareAsync(string dir, string size)
    {
        await ImageRecipes.Qcow2Async(dir, "src.qcow2", "4M", [], ["write -P 0x11 0 64k", "write -P 0x22 1M 64k"]);
        var target = $"{dir}/target.raw";
        await QemuImages.CreateAsync(target, size, $"write -P 0x77 0 {size}");
        return target;
    }

    static JsonObject DriveMirror(string target, JsonObject? more = null)
    {
        var request = new JsonObject { ["job-id"] = "job0", ["device"] = "src", ["target"] = target, ["sync"] = "full" };
        foreach (var (key, value) in more ?? [])
        {
            request[key] = value?.DeepClone();
        }

        return request;
    }

    /// <summary>Mirrors onto the export to READY, completes, and returns the events; the export's file after the server stopped.</summary>
    async Task<List<string>> MirrorToCompletionAsync(DifferentialDaemon daemon, string dir, string target, JsonObject more)
    {
        await using var export = await QemuNbdExport.StartAsync(target, "disk");
        return await daemon.RunAsync(dir, SourceNode(dir), "src", async (qmp, _) =>
        {
            await qmp.ExecuteAsync("drive-mirror", DriveMirror(export.Uri, more));
            await qmp.WaitEventAsync("BLOCK_JOB_READY");
            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });
    }

    public static TheoryData<string, string, string> Completions => new()
    {
        // mode, format (or "" for none), export size
        { "existing", "raw", "4M" },
        { "existing", "", "4M" },
        { "absolute-paths", "raw", "4M" },
        // QEMU's default format is the source's: a qcow2 is made on the export, whose size does not matter.
        { "absolute-paths", "", "2M" },
    };

    [SkippableTheory]
    [MemberData(nameof(Completions))]
    public async Task Drive_mirror_onto_an_nbd_uri_copies_the_source_into_the_export_on_both_daemons(string mode, string format, string size)
    {
        var daemons = Daemons();
        List<string>[] events = [[], []];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            var target = await PrepareAsync(dir, size);
            var more = new JsonObject { ["mode"] = mode };
            if (format.Length > 0)
            {
                more["format"] = format;
            }

            events[i] = await MirrorToCompletionAsync(daemons[i], dir, target, more);
            var made = mode == "absolute-paths" && format.Length == 0 ? "qcow2" : "raw";
            Assert.Equal(made, await FormatAsync(target));
            Assert.Equal(ByteSize(size), new FileInfo(target).Length);
            await QemuImages.AssertIdenticalAsync($"{dir}/src.qcow2", target, expectedFormat: "qcow2", actualFormat: made);
            if (made == "qcow2")
            {
                Assert.Contains("No errors were found on the image.", await ExternalTool.RunCheckedAsync("qemu-img", "check", target));
            }
        }

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, events[0]);
        Assert.Equal(events[0], events[1]);
    }

    /// <summary>Requests refused before any job, with the export they target (its size) or none.</summary>
    public static TheoryData<string, string, string> Refusals => new()
    {
        // target ("EXPORT" is replaced by the export's URI), more arguments as JSON, export size or "" for no export
        { "nbd://127.0.0.1:99999/disk", """{"mode":"existing"}""", "" },
        { "nbd+unix:///disk", """{"mode":"existing","format":"raw"}""", "" },
        { "nbd:", """{"mode":"existing"}""", "" },
        { "nbd:foo", """{"mode":"existing"}""", "" },
        { "foo:bar", """{"format":"raw"}""", "" },
        { "EXPORT", """{"format":"raw"}""", "2M" },
        // Nobody serves it: "Protocol driver 'nbd' does not support image creation, and opening the image failed: ..." with absolute-paths.
        { "nbd+unix:///disk?socket=/tmp/blockmirror-nobody.sock", """{"format":"raw"}""", "" },
        { "nbd+unix:///disk?socket=/tmp/blockmirror-nobody.sock", """{"mode":"existing"}""", "" },
    };

    [SkippableTheory]
    [MemberData(nameof(Refusals))]
    public async Task A_name_or_export_qemu_refuses_is_refused_in_its_words_and_left_as_it_was(string target, string more, string size)
    {
        var daemons = Daemons();
        var replies = new string[2];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            var file = await PrepareAsync(dir, size.Length > 0 ? size : "1M");
            var before = QemuImages.Fingerprint(file);
            await using var export = size.Length > 0 ? await QemuNbdExport.StartAsync(file, "disk") : null;
            var i1 = i;
            var events = await daemons[i].RunAsync(dir, SourceNode(dir), "src", async (qmp, _) =>
            {
                var request = DriveMirror(target.Replace("EXPORT", export?.Uri, StringComparison.Ordinal), JsonNode.Parse(more)!.AsObject());
                var error = (await qmp.CommandAsync("drive-mirror", request))["error"] ?? throw new InvalidOperationException($"{daemons[i1].Name} accepted {request.ToJsonString()}");
                replies[i1] = $"{error["class"]}: {error["desc"]}";
            });
            Assert.Equal(["BLOCK_EXPORT_DELETED"], events);
            await (export?.DisposeAsync() ?? ValueTask.CompletedTask);
            Assert.Equal(before, QemuImages.Fingerprint(file));
        }

        Assert.StartsWith("GenericError: ", replies[0], StringComparison.Ordinal);
        Assert.Equal(replies[0], replies[1]);
    }

    /// <summary>
    /// Pinned difference: qemu-storage-daemon 7.2 refuses <c>nbds://</c> as an unknown protocol; here it is an NBD
    /// name over TLS, and the refusal is its missing credentials (QEMU's default x509 directory; an object that is
    /// not there), before any job and without touching anything.
    /// </summary>
    [SkippableTheory]
    [InlineData("nbds://127.0.0.1/disk", """{"mode":"existing"}""", "TLS certificates for nbds: Unable to access credentials /etc/pki/qemu/ca-cert.pem")]
    [InlineData("nbds+unix:///disk?socket=/tmp/none.sock&tls-creds=nope", "{}", "No TLS credentials with id 'nope'")]
    public async Task An_nbds_target_unknown_to_qemu_is_refused_here_for_its_credentials(string target, string more, string ours)
    {
        Skip.If(File.Exists("/etc/pki/qemu/ca-cert.pem"), "this machine has QEMU's default x509 credentials");
        var daemons = Daemons();
        var replies = new string[2];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            var file = await PrepareAsync(dir, "1M");
            var i1 = i;
            var events = await daemons[i].RunAsync(dir, SourceNode(dir), "src", async (qmp, _) =>
            {
                var error = (await qmp.CommandAsync("drive-mirror", DriveMirror(target, JsonNode.Parse(more)!.AsObject())))["error"]!;
                replies[i1] = $"{error["class"]}: {error["desc"]}";
            });
            Assert.Equal(["BLOCK_EXPORT_DELETED"], events);
        }

        Assert.True(replies[0].StartsWith("GenericError: ", StringComparison.Ordinal) && replies[0].EndsWith($"Unknown protocol '{target[..target.IndexOf(':')]}'", StringComparison.Ordinal),
            $"qemu-storage-daemon: {replies[0]}");
        Assert.True(replies[1].StartsWith("GenericError: ", StringComparison.Ordinal) && replies[1].Contains(ours, StringComparison.Ordinal), $"blockmirror: {replies[1]}");
    }

    /// <summary>blockdev-add reads no protocol prefix: a file node's filename is a file's name, whatever it looks like.</summary>
    [SkippableFact]
    public async Task Blockdev_add_takes_an_nbd_uri_as_a_file_name_on_both_daemons()
    {
        var daemons = Daemons();
        var replies = new string[2];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            await PrepareAsync(dir, "1M");
            var i1 = i;
            await daemons[i].RunAsync(dir, SourceNode(dir), "src", async (qmp, uri) =>
            {
                var error = (await qmp.CommandAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "x", ["filename"] = uri }))["error"]!;
                replies[i1] = $"{error["class"]}: {error["desc"]}".Replace(dir, "DIR", StringComparison.Ordinal);
            });
        }

        Assert.Equal("GenericError: Could not open 'nbd+unix:///disk?socket=DIR/nbd.sock': No such file or directory", replies[0]);
        Assert.Equal(replies[0], replies[1]);
    }

    /// <summary>
    /// Where QEMU writes and then fails, the same failure here comes before any write: a raw export of another
    /// size than the source (QEMU clears its first sector, then the job fails on the sizes) and a qcow2 on an
    /// export too small for the new image's tables (QEMU has written the header when it fails).
    /// </summary>
    [SkippableFact]
    public async Task Where_qemu_writes_before_it_fails_nothing_is_written()
    {
        var daemons = Daemons();
        var outcomes = new string[2][];
        var firstSectors = new byte[2][][];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = DirFor(daemons[i]);
            var larger = await PrepareAsync(dir, "8M");
            await QemuImages.CreateAsync($"{dir}/small.raw", "128k", "write -P 0x77 0 128k");
            await using var largeExport = await QemuNbdExport.StartAsync(larger, "disk");
            await using var smallExport = await QemuNbdExport.StartAsync($"{dir}/small.raw", "small");
            var i1 = i;
            var events = await daemons[i].RunAsync(dir, SourceNode(dir), "src", async (qmp, _) =>
            {
                await qmp.ExecuteAsync("drive-mirror", DriveMirror(largeExport.Uri, new JsonObject { ["format"] = "raw" }));
                await DifferentialDaemon.WaitJobGoneAsync(qmp);
                var error = (await qmp.CommandAsync("drive-mirror", DriveMirror(smallExport.Uri)))["error"]!;
                outcomes[i1] = [$"{error["class"]}: {error["desc"]}"];
            });
            outcomes[i] = [.. outcomes[i], .. events];
            await largeExport.DisposeAsync();
            await smallExport.DisposeAsync();
            firstSectors[i] = [File.ReadAllBytes(larger)[..512], File.ReadAllBytes($"{dir}/small.raw")[..4]];
        }

        Assert.Equal("GenericError: Could not write refcount table: Invalid argument", outcomes[0][0]);
        Assert.Contains("BLOCK_JOB_COMPLETED error: Source and target image have different sizes", outcomes[0]);
        Assert.Equal(outcomes[0], outcomes[1]);

        // qemu-storage-daemon: the raw export's first sector cleared, a qcow2 magic at the small export's start.
        Assert.Equal(new byte[512], firstSectors[0][0]);
        Assert.Equal(new byte[] { 0x51, 0x46, 0x49, 0xfb }, firstSectors[0][1]);
        // Ours: both as they were.
        Assert.Equal(Enumerable.Repeat((byte)0x77, 512), firstSectors[1][0]);
        Assert.Equal(Enumerable.Repeat((byte)0x77, 4), firstSectors[1][1]);
    }

    static async Task<string> FormatAsync(string path)
    {
        var info = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", path);
        return (string)JsonNode.Parse(info)!["format"]!;
    }

    static long ByteSize(string size) => long.Parse(size[..^1], System.Globalization.CultureInfo.InvariantCulture) << 20;
}
