using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The main scenario as a qemu-storage-daemon user scripts it, run unchanged against qemu-storage-daemon
/// and against <c>blockmirror serve</c>: a disk exported over NBD and written by qemu-io before, during and
/// after a blockdev-mirror, READY, block-job-complete, and writes after the pivot. Both daemons must give
/// the same events and job states, and both targets must hold every write.
/// </summary>
public sealed class ServeDifferentialTests : IDisposable
{
    const long Size = 16 << 20;

    readonly TempDirectory _dir = new("blockmirror-serve-test-");

    public void Dispose() => _dir.Dispose();

    /// <summary>The writes of the scenario: (pattern byte, offset, length), in the order they are made.</summary>
    static readonly (string Phase, int Pattern, long Offset, int Length)[] Writes =
    [
        ("before", 0x11, 0, 1 << 20),
        ("before", 0x12, 5 << 20, 64 << 10),
        ("running", 0x21, 512 << 10, 128 << 10),
        ("running", 0x22, 9 << 20, 4 << 10),
        ("ready", 0x31, 12 << 20, 1 << 20),
        ("ready", 0x32, 64 << 10, 4 << 10),
        ("pivoted", 0x41, 15 << 20, 256 << 10),
        ("pivoted", 0x42, 0, 4 << 10),
    ];

    [SkippableFact]
    public async Task The_same_script_gives_the_same_events_on_both_daemons_and_loses_no_write()
    {
        var theirs = await RunScenarioAsync(DifferentialDaemon.Qsd());
        var ours = await RunScenarioAsync(DifferentialDaemon.Ours());

        Assert.Equal(DifferentialDaemon.ReadyJobEvents, theirs);
        Assert.Equal(theirs, ours);
    }

    async Task<List<string>> RunScenarioAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", $"{dir}/source.raw", Size.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", $"{dir}/target.raw", Size.ToString(System.Globalization.CultureInfo.InvariantCulture));
        string[] blockdevs = ["--blockdev", $"driver=file,node-name=file0,filename={dir}/source.raw", "--blockdev", "driver=raw,node-name=disk,file=file0"];
        var events = await daemon.RunAsync(dir, blockdevs, "disk", async (qmp, uri) =>
        {
            await WriteAsync(uri, "before");
            await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "file", ["node-name"] = "target-file", ["filename"] = $"{dir}/target.raw" });
            await qmp.ExecuteAsync("blockdev-add", new JsonObject { ["driver"] = "raw", ["node-name"] = "target", ["file"] = "target-file" });
            await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "job0", ["device"] = "disk", ["target"] = "target", ["sync"] = "full" });
            await WriteAsync(uri, "running");
            await qmp.WaitEventAsync("BLOCK_JOB_READY");
            await WriteAsync(uri, "ready");
            await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "job0" });
            await DifferentialDaemon.WaitJobGoneAsync(qmp);

            // After the pivot the export writes to the target.
            var exports = (await qmp.ExecuteAsync("query-block-exports"))!.AsArray();
            Assert.Equal("target", (string?)exports.Single()!["node-name"]);
            await WriteAsync(uri, "pivoted");
        });

        var target = await File.ReadAllBytesAsync($"{dir}/target.raw");
        var expected = new byte[Size];
        foreach (var write in Writes)
        {
            expected.AsSpan((int)write.Offset, write.Length).Fill((byte)write.Pattern);
        }

        Assert.True(expected.AsSpan().SequenceEqual(target), $"{daemon.Name}: the target does not hold every write");
        return events;
    }

    static Task WriteAsync(string uri, string phase) =>
        ImageRecipes.QemuIoAsync(uri, "raw", Writes.Where(w => w.Phase == phase).Select(w => $"write -P {w.Pattern} {w.Offset} {w.Length}"));
}
