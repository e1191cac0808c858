using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Thin stays thin: QEMU's iotest <c>mirror-sparse</c> (tests/qemu-iotests/tests/mirror-sparse, QEMU 10.1), ours. A
/// 64 MiB raw source holding 4 MiB of data is mirrored by <c>blockmirror serve</c> onto raw and qcow2 targets made
/// each way a user makes one (<c>qemu-img create</c>, with <c>preallocation=full</c> too, <c>blockmirror create</c>,
/// drive-mirror in both modes), opened with each discard and detect-zeroes mode QEMU accepts together (the
/// table's columns, and detect-zeroes=on besides), with and without <c>target-is-zero</c>. Every target must read
/// as the source (<c>qemu-img compare</c>), and where QEMU 10.1's table says sparse its allocation must stay
/// within 10 % + 1 MiB of the source's; only a preallocated target that may not punch holes (discard=ignore), or
/// that the user calls zero, stays fully allocated, as in QEMU 10.1.
/// </summary>
/// <remarks>
/// As in the iotest, discard and detect-zeroes are the file node's. drive-mirror opens its target itself: the
/// format node with the source's discard=ignore, its file with discard=unmap (as QEMU 7.2), so a preallocated raw
/// target is punched there and a preallocated qcow2 keeps its clusters. Each job is cancelled once READY (a copy
/// in sync, as QEMU's soft cancel leaves it), so one daemon mirrors the same source onto every variant of a
/// creation mode.
/// </remarks>
public sealed class MirrorSparseTests : IDisposable
{
    const long Size = 64 << 20;
    const long Data = 4 << 20;

    readonly TempDirectory _dir = TempDirectory.OnDisk("blockmirror-mirror-sparse-");

    public void Dispose() => _dir.Dispose();

    /// <summary>One target: how it is made and opened, and whether QEMU 10.1's table says it ends sparse.</summary>
    sealed record Variant(string Name, string Format, string Discard, string DetectZeroes, bool TargetIsZero, bool Sparse);

    /// <summary>The file node's discard and detect-zeroes: every pair QEMU accepts (unmap needs discard=unmap).</summary>
    static readonly (string Discard, string DetectZeroes)[] FileModes =
        [("ignore", "off"), ("ignore", "on"), ("unmap", "off"), ("unmap", "on"), ("unmap", "unmap")];

    public static TheoryData<string, string> Creations => new()
    {
        { "qemu-img", "raw" }, { "qemu-img", "qcow2" }, { "qemu-img-full", "raw" }, { "qemu-img-full", "qcow2" },
        { "blockmirror-create", "raw" }, { "blockmirror-create", "qcow2" },
        { "drive-mirror-new", "raw" }, { "drive-mirror-new", "qcow2" },
        { "drive-mirror-existing", "raw" }, { "drive-mirror-existing", "qcow2" },
        { "drive-mirror-existing-full", "raw" }, { "drive-mirror-existing-full", "qcow2" },
    };

    [SkippableTheory]
    [MemberData(nameof(Creations))]
    public async Task A_sparse_source_mirrors_onto_a_target_that_reads_as_it_and_stays_as_thin_as_qemu_10_1_keeps_it(string creation, string format)
    {
        ExternalTool.Require("qemu-img");
        var dir = _dir.Path;
        var source = $"{dir}/source.raw";
        await QemuImages.CreateAsync(source, "64M", "write -P 0x5a 8M 2M", "write -P 0x33 40M 2M");
        var sourceAllocated = await QemuImages.AllocatedBytesAsync(source);
        Assert.InRange(sourceAllocated, Data, Data + (1 << 20));

        var drive = creation.StartsWith("drive-mirror", StringComparison.Ordinal);
        // drive-mirror opens its target itself: no discard or detect-zeroes column there.
        (string, string)[] modes = drive ? [("", "")] : FileModes;
        var preallocated = creation.EndsWith("-full", StringComparison.Ordinal);
        var variants = new List<Variant>();
        foreach (var (discard, detectZeroes) in modes)
        {
            foreach (var targetIsZero in new[] { false, true })
            {
                // QEMU 10.1's table: a preallocated target is written as zeroes unless holes may be punched;
                // with target-is-zero its allocated zeroes are simply kept. Under raw the file punches where its
                // discard lets it (drive-mirror's file always may); a qcow2 node, opened with discard=ignore
                // here, frees or zeroes its clusters without punching them.
                var punches = format == "raw" && (drive || discard == "unmap");
                var sparse = !preallocated || (punches && !targetIsZero);
                variants.Add(new Variant($"t{variants.Count}", format, discard, detectZeroes, targetIsZero, sparse));
            }
        }

        foreach (var variant in variants)
        {
            await CreateTargetAsync(creation, TargetPath(variant));
        }

        await DifferentialDaemon.Ours().RunAsync(dir, ["--blockdev", $"driver=raw,node-name=src,file.driver=file,file.filename={source}"], "src",
            async (qmp, _) =>
            {
                foreach (var variant in variants)
                {
                    await MirrorAsync(qmp, creation, variant);
                }
            });

        foreach (var variant in variants)
        {
            var path = TargetPath(variant);
            await QemuImages.AssertIdenticalAsync(source, path, actualFormat: format);
            var allocated = await QemuImages.AllocatedBytesAsync(path);
            var what = $"{creation} {format} discard={variant.Discard} detect-zeroes={variant.DetectZeroes} target-is-zero={variant.TargetIsZero}: " +
                $"{allocated} bytes allocated, source {sourceAllocated}";
            if (variant.Sparse)
            {
                Assert.True(allocated <= (sourceAllocated * 11 / 10) + (1 << 20), $"{what}: not sparse");
            }
            else
            {
                Assert.True(allocated >= Size - (1 << 20), $"{what}: QEMU 10.1 keeps this target fully allocated");
            }
        }
    }

    string TargetPath(Variant variant) => $"{_dir.Path}/{variant.Name}.{variant.Format}";

    async Task CreateTargetAsync(string creation, string path)
    {
        var format = Path.GetExtension(path)[1..];
        switch (creation)
        {
            case "qemu-img" or "drive-mirror-existing":
                await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", format, path, "64M");
                break;
            case "qemu-img-full" or "drive-mirror-existing-full":
                await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", format, "-o", "preallocation=full", path, "64M");
                Assert.True(await QemuImages.AllocatedBytesAsync(path) >= Size);
                break;
            case "blockmirror-create":
                var result = await BlockMirrorCli.RunAsync(["create", "-q", "-f", format, path, "64M"]);
                Assert.True(result.ExitCode == 0, result.ToString());
                break;
            case "drive-mirror-new":
                // drive-mirror makes it.
                break;
            default:
                throw new ArgumentException($"no such creation mode: {creation}", nameof(creation));
        }
    }

    async Task MirrorAsync(QmpClient qmp, string creation, Variant variant)
    {
        var job = $"job-{variant.Name}";
        JsonObject arguments;
        if (creation.StartsWith("drive-mirror", StringComparison.Ordinal))
        {
            arguments = new JsonObject
            {
                ["job-id"] = job, ["device"] = "src", ["target"] = TargetPath(variant), ["format"] = variant.Format,
                ["sync"] = "full", ["mode"] = creation == "drive-mirror-new" ? "absolute-paths" : "existing", ["node-name"] = variant.Name,
            };
        }
        else
        {
            await qmp.ExecuteAsync("blockdev-add", new JsonObject
            {
                ["driver"] = variant.Format, ["node-name"] = variant.Name,
                ["file"] = new JsonObject
                {
                    ["driver"] = "file", ["filename"] = TargetPath(variant), ["discard"] = variant.Discard, ["detect-zeroes"] = variant.DetectZeroes,
                },
            });
            arguments = new JsonObject { ["job-id"] = job, ["device"] = "src", ["target"] = variant.Name, ["sync"] = "full" };
        }

        if (variant.TargetIsZero)
        {
            arguments["target-is-zero"] = true;
        }

        await qmp.ExecuteAsync(creation.StartsWith("drive-mirror", StringComparison.Ordinal) ? "drive-mirror" : "blockdev-mirror", arguments);
        await qmp.WaitEventAsync("BLOCK_JOB_READY", e => (string?)e["data"]!["device"] == job);
        await qmp.ExecuteAsync("block-job-cancel", new JsonObject { ["device"] = job });
        await qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["id"] == job && (string?)e["data"]!["status"] == "null");
        // The target's node closes, and with it its file (drive-mirror's may be gone with its job already).
        await qmp.CommandAsync("blockdev-del", new JsonObject { ["node-name"] = variant.Name });
    }
}
