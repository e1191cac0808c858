using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Byte-granular and oversized I/O through an NBD export of a node that must pad (<c>cache.direct=on</c>,
/// 4 KiB alignment), raw and qcow2: qemu-io's writes of 1 byte, 512 bytes at odd offsets, write-zeroes at
/// odd offsets and 5 MiB at an odd offset read back exactly, and the image equals a raw file that qemu-io
/// wrote with the same commands.
/// </summary>
public sealed class ServeUnalignedIoTests : IDisposable
{
    const string Size = "16M";

    static readonly string[] Writes =
    [
        "write -P 0x11 0 1",
        "write -P 0x22 513 512",
        "write -P 0x33 4095 2",
        "write -P 0x44 12345 5M",
        "write -z 70001 9999",
        "write -P 0x55 8191 1",
        "write -P 0x66 9437183 6M",
        "write -z 15728641 511",
    ];

    static readonly string[] Reads =
    [
        "read -P 0x11 0 1",
        "read -P 0x22 513 512",
        "read -P 0x33 4095 2",
        "read -P 0x44 12345 57656",
        "read -P 0 70001 9999",
        "read -P 0x44 80000 5000000",
        "read -P 0x66 9437183 1",
        "read -P 0x66 9437184 6291455",
        "read -P 0 15728641 511",
    ];

    readonly TempDirectory _dir = new("blockmirror-serve-unaligned-");

    public void Dispose() => _dir.Dispose();

    [SkippableTheory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    public async Task Byte_granular_io_through_an_export_of_a_cache_direct_node_reads_back_exactly(string format)
    {
        ExternalTool.Require("qemu-io");
        var image = _dir.File($"disk.{format}");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", format, image, Size);
        var reference = _dir.File("reference.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", reference, Size);
        await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "raw", .. Writes.SelectMany(c => new[] { "-c", c }), reference]);

        // The daemon as the differential tests start it: the node exported writable over a Unix socket.
        await DifferentialDaemon.Ours().RunAsync(_dir.Path, ["--blockdev", $"driver={format},node-name=disk,file.driver=file,file.filename={image},file.cache.direct=on"],
            "disk", async (qmp, uri) =>
            {
                var written = await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "raw", .. Writes.SelectMany(c => new[] { "-c", c }), uri]);
                Assert.DoesNotContain("error", written, StringComparison.OrdinalIgnoreCase);
                var read = await ExternalTool.RunCheckedAsync("qemu-io", ["-f", "raw", .. Reads.SelectMany(c => new[] { "-c", c }), uri]);
                Assert.DoesNotContain("Pattern verification failed", read);
                Assert.DoesNotContain("error", read, StringComparison.OrdinalIgnoreCase);

                // Through the export, as a client sees it; then the image itself once the daemon is gone.
                await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", uri, reference);
            });

        await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", format, "-F", "raw", image, reference);
        if (format == "qcow2")
        {
            Assert.Contains("No errors were found on the image.", await ExternalTool.RunCheckedAsync("qemu-img", "check", image));
        }
    }
}
