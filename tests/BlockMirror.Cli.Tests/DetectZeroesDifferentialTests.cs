using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// detect-zeroes on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: a guest writes a buffer of zeroes
/// through the NBD export of a node opened with each discard and detect-zeroes mode, onto a preallocated and a
/// sparse image. Both daemons must leave the image reading zeroes there, with the same allocation (so a zero
/// write punches only with detect-zeroes=unmap, and stays out of a qcow2 with either mode), and report the
/// mode in query-named-block-nodes alike.
/// </summary>
public sealed class DetectZeroesDifferentialTests : IDisposable
{
    const long Size = 8 << 20;
    const long Written = 4 << 20;

    readonly TempDirectory _dir = TempDirectory.OnDisk("blockmirror-detect-zeroes-");

    public void Dispose() => _dir.Dispose();

    /// <summary>format, whether the image is created preallocated, the node's discard, its detect-zeroes; then the allocation both must leave.</summary>
    public static TheoryData<string, bool, string, string, string> Cases => new()
    {
        { "raw", true, "ignore", "off", "full" },
        { "raw", true, "ignore", "on", "full" },
        { "raw", true, "unmap", "off", "full" },
        { "raw", true, "unmap", "on", "full" },
        { "raw", true, "unmap", "unmap", "punched" },
        { "raw", false, "ignore", "off", "written" },
        { "raw", false, "unmap", "unmap", "empty" },
        { "qcow2", false, "ignore", "off", "written" },
        { "qcow2", false, "ignore", "on", "empty" },
        { "qcow2", false, "unmap", "unmap", "empty" },
    };

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public async Task A_guest_writing_zeroes_allocates_alike_on_both_daemons(string format, bool preallocated, string discard, string detectZeroes, string expected)
    {
        var daemons = new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() };
        var outcomes = new string[2];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Directory.CreateDirectory(Path.Combine(_dir.Path, daemons[i].Name)).FullName;
            var image = $"{dir}/disk.{format}";
            File.Delete(image);
            await ExternalTool.RunCheckedAsync("qemu-img", ["create", "-q", "-f", format, .. preallocated ? new[] { "-o", "preallocation=full" } : [], image, $"{Size}"]);
            var before = await QemuImages.AllocatedBytesAsync(image);
            string? reported = null;
            await daemons[i].RunAsync(dir,
                ["--blockdev", $"driver={format},node-name=disk,discard={discard},detect-zeroes={detectZeroes},file.driver=file,file.filename={image}"],
                "disk", async (qmp, uri) =>
                {
                    // qemu-io's write sends the zeroes as data (NBD_CMD_WRITE), not as a write-zeroes.
                    await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", $"write -P 0x11 0 64k", "-c", $"write -P 0 1M {Written}", uri);
                    await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", $"read -P 0 1M {Written}", "-c", "read -P 0x11 0 64k", uri);
                    var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
                    reported = (string?)nodes.Single(n => (string?)n!["node-name"] == "disk")!["detect_zeroes"];
                });

            var after = await QemuImages.AllocatedBytesAsync(image);
            outcomes[i] = $"detect_zeroes={reported} {Classify(before, after)}";
        }

        Assert.Equal($"detect_zeroes={detectZeroes} {expected}", outcomes[0]);
        Assert.Equal(outcomes[0], outcomes[1]);
    }

    /// <summary>What the zero write did to the image's allocation, within 1 MiB (metadata, the 64 KiB of data).</summary>
    static string Classify(long before, long after)
    {
        const long slack = 1 << 20;
        var grown = after - before;
        if (Math.Abs(grown) < slack)
        {
            return before >= Size ? "full" : "empty";
        }

        if (Math.Abs(grown - Written) < slack)
        {
            return "written";
        }

        return Math.Abs(grown + Written) < slack ? "punched" : $"unexpected: {before} then {after} bytes allocated";
    }
}
