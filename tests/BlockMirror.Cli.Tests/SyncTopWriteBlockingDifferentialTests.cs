using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A write-blocking drive-mirror with sync=top onto a new qcow2 whose backing (the source's base) is attached
/// only at the switch, run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>. After READY
/// the guest writes pieces smaller than a cluster into clusters the top does not hold: the target must not
/// allocate such a cluster with zeroes around the write, or the switched disk reads zeroes where the base had
/// data. Ours sends only whole clusters to the target and copies the rest from the source, so every byte of
/// the disk survives the switch. Pinned difference: QEMU 7.2 writes the guest's range as it is, so its target
/// hides the base's data around each such write (what this test records of it, exactly).
/// </summary>
public sealed class SyncTopWriteBlockingDifferentialTests : IDisposable
{
    const int Size = 8 << 20;
    const int Cluster = 64 << 10;
    const byte Base = 0xaa;

    readonly TempDirectory _dir = new("blockmirror-synctop-wb-");

    public void Dispose() => _dir.Dispose();

    /// <summary>Before the job, into the top (allocated there, so copied by sync=top).</summary>
    static readonly (int Pattern, int Offset, int Length)[] TopWrites = [(0xbb, 1 << 20, Cluster)];

    /// <summary>After READY, while writes block: each smaller than a cluster, in clusters the top does not hold.</summary>
    static readonly (int Pattern, int Offset, int Length)[] GuestWrites =
    [
        (0xcc, (3 << 20) + 4096, 4096),
        (0xdd, (5 << 20) + 100, 512),
        (0xee, (6 << 20) + Cluster - 4096, 8192),
    ];

    [SkippableFact]
    public async Task Guest_writes_smaller_than_a_cluster_leave_the_base_data_around_them_on_our_target()
    {
        var theirs = await RunScenarioAsync(DifferentialDaemon.Qsd());
        var ours = await RunScenarioAsync(DifferentialDaemon.Ours());

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, theirs.Events);
        Assert.Equal(theirs.Events, ours.Events);

        var expected = Expected();
        MirrorAssert(expected, ours.Disk, "ours");

        // Pinned: QEMU 7.2's target holds each guest write but zeroes in the rest of its cluster.
        var zeroed = Expected();
        foreach (var (pattern, offset, length) in GuestWrites)
        {
            var first = offset / Cluster * Cluster;
            var end = (offset + length + Cluster - 1) / Cluster * Cluster;
            zeroed.AsSpan(first, end - first).Clear();
            zeroed.AsSpan(offset, length).Fill((byte)pattern);
        }

        MirrorAssert(zeroed, theirs.Disk, "qsd (pinned: zeroes around each write)");
    }

    static byte[] Expected()
    {
        var disk = new byte[Size];
        disk.AsSpan().Fill(Base);
        foreach (var (pattern, offset, length) in TopWrites.Concat(GuestWrites))
        {
            disk.AsSpan(offset, length).Fill((byte)pattern);
        }

        return disk;
    }

    static void MirrorAssert(byte[] expected, byte[] actual, string who)
    {
        Assert.Equal(expected.Length, actual.Length);
        var at = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(at == expected.Length, $"{who}: the switched target differs at {at}: 0x{(at < actual.Length ? actual[at] : 0):x2}, expected 0x{(at < expected.Length ? expected[at] : 0):x2}");
    }

    async Task<(List<string> Events, byte[] Disk)> RunScenarioAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var basePath = await ImageRecipes.Qcow2Async(dir, "base.qcow2", $"{Size}", [], [$"write -P {Base} 0 {Size}"]);
        var top = await ImageRecipes.Qcow2Async(dir, "top.qcow2", null, ["-b", basePath, "-F", "qcow2"],
            [.. TopWrites.Select(w => $"write -P {w.Pattern} {w.Offset} {w.Length}")]);
        string[] blockdevs = ["--blockdev", $"driver=file,node-name=file0,filename={top}", "--blockdev", "driver=qcow2,node-name=disk,file=file0"];
        var target = $"{dir}/target.qcow2";
        var events = await daemon.RunAsync(dir, blockdevs, "disk", async (qmp, uri) =>
        {
            await qmp.ExecuteAsync("drive-mirror", new JsonObject
            {
                ["job-id"] = "job0", ["device"] = "disk", ["target"] = target, ["format"] = "qcow2",
                ["sync"] = "top", ["mode"] = "absolute-paths", ["copy-mode"] = "write-blocking",
            });
            await qmp.WaitEventAsync("BLOCK_JOB_READY");
            await ImageRecipes.QemuIoAsync(uri, "raw", GuestWrites.Select(w => $"write -P {w.Pattern} {w.Offset} {w.Length}"));
            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);
        });

        // The disk as the switched target shows it: the target over the base it names.
        var raw = $"{dir}/target.raw";
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", target, raw);
        return (events, await File.ReadAllBytesAsync(raw));
    }
}
