using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// QEMU's iotest 109 (mirroring raw images whose first sector looks like another format) ported to the
/// daemon, each scenario run unchanged on qemu-storage-daemon 7.2 and <c>blockmirror serve</c>
/// (<see cref="IotestRun"/>). The source is an image of another format made by qemu-img, opened as raw; the
/// target is an existing raw file of the same size given to drive-mirror without a format, so it is probed as
/// raw and guarded: the copy of the source's first sector would give it an image header, so the write fails
/// with EPERM and the job ends with "Operation not permitted", the target's first sector untouched. With
/// <c>format: raw</c> the same mirror succeeds and the target equals the source. 109 waits for READY and
/// quits; here the job is soft-cancelled at READY, which leaves the same copy and ends the same on both.
/// </summary>
public sealed class Iotest109Tests : IDisposable
{
    readonly TempDirectory _root = new("bm-iotest109-");

    public void Dispose() => _root.Dispose();

    /// <summary>109's first loop: the source is an empty 64M image of <paramref name="format"/> (a small file), the target a raw file of its size.</summary>
    static Func<string, Task> SetUp(string format) => async dir =>
    {
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", format, $"{dir}/src.img", "64M");
        await using var target = File.Create($"{dir}/t.raw");
        target.SetLength(new FileInfo($"{dir}/src.img").Length);
    };

    static string[] Source(string dir) => IotestRun.RawNode(dir, "src", "src.img");

    static async Task MirrorAsync(IotestSession s, bool explicitRaw)
    {
        var arguments = new JsonObject { ["job-id"] = "src", ["device"] = "src", ["target"] = $"{s.Dir}/t.raw", ["mode"] = "existing", ["sync"] = "full" };
        if (explicitRaw)
        {
            arguments["format"] = "raw";
        }

        await s.RunAsync("drive-mirror", arguments);
        if (explicitRaw)
        {
            await s.WaitReadyAsync();
            await s.RunAsync("block-job-cancel", new JsonObject { ["device"] = "src" });
        }

        await s.WaitGoneAsync();
    }

    /// <summary>109 "Writing a FORMAT header into raw": refused without a format, copied with format raw.</summary>
    [SkippableTheory]
    [InlineData("qcow")]
    [InlineData("qcow2")]
    [InlineData("qed")]
    [InlineData("vdi")]
    [InlineData("vmdk")]
    [InlineData("vpc")]
    public async Task Writing_a_header_into_raw(string format)
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, SetUp(format), Source, "src", s => MirrorAsync(s, explicitRaw: false));
        Assert.Contains("BLOCK_JOB_ERROR write report", qsd.Events);
        Assert.Contains("BLOCK_JOB_COMPLETED error: Operation not permitted", qsd.Events);
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            var start = new byte[512];
            await using (var target = File.OpenRead($"{dir}/t.raw"))
            {
                await target.ReadExactlyAsync(start);
            }

            Assert.All(start, b => Assert.Equal(0, b));
        }

        // "When raw was explicitly specified, the same must succeed": on fresh copies of the images.
        using var again = new TempDirectory("bm-iotest109-raw-");
        (qsd, ours) = await IotestRun.OnBothAsync(again, SetUp(format), Source, "src", s => MirrorAsync(s, explicitRaw: true));
        Assert.Equal(DifferentialDaemon.ReadyJobEvents, qsd.Events);
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/src.img", $"{dir}/t.raw");
        }
    }

    /// <summary>109 "Write legitimate MBR into raw": a boot sector (0x55AA at its end) is no image header, so the probed target takes it without a format.</summary>
    [SkippableFact]
    public async Task Write_legitimate_MBR_into_raw()
    {
        var (qsd, ours) = await IotestRun.OnBothAsync(_root, async dir =>
        {
            var mbr = new byte[512];
            new Random(109).NextBytes(mbr.AsSpan(0, 446));
            mbr[510] = 0x55;
            mbr[511] = 0xaa;
            await using (var source = File.Create($"{dir}/src.img"))
            {
                source.SetLength(1 << 20);
                await source.WriteAsync(mbr);
            }

            await using var target = File.Create($"{dir}/t.raw");
            target.SetLength(1 << 20);
        }, Source, "src", async s =>
        {
            await s.RunAsync("drive-mirror", new JsonObject { ["job-id"] = "src", ["device"] = "src", ["target"] = $"{s.Dir}/t.raw", ["mode"] = "existing", ["sync"] = "full" });
            await s.CompleteAndWaitAsync("src");
        });

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, qsd.Events);
        foreach (var dir in new[] { qsd.Dir, ours.Dir })
        {
            await QemuImages.AssertIdenticalAsync($"{dir}/src.img", $"{dir}/t.raw");
        }
    }
}
