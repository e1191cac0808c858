using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror bench</c>: qemu-img bench's request order and output, so that the benchmarks can run both
/// with the same arguments and compare their times.
/// </summary>
public sealed class BenchCommandTests : IDisposable
{
    const int Block = 4096;
    const int Blocks = 64;

    readonly TempDirectory _dir = new("blockmirror-bench-test-");

    public void Dispose() => _dir.Dispose();

    string CreateImage()
    {
        var path = _dir.File("image.raw");
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        stream.SetLength(Blocks * Block);
        return path;
    }

    [Theory]
    [InlineData("none")]
    [InlineData("writeback")]
    public async Task Writes_land_where_qemu_img_bench_would_put_them(string cache)
    {
        // Step 5 blocks over 64 blocks, from block 3: requests i = 0..9 hit blocks (3 + 5i) mod 64.
        var image = CreateImage();

        var result = await BlockMirrorCli.RunAsync("bench", "-w", "-c", "10", "-d", "4", "-o", "12K", "-S", "20K", "-t", cache, "--pattern", "171", image);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("Sending 10 write requests, 4096 bytes each, 4 in parallel (starting at offset 12288, step size 20480)", result.OutputLines[0]);
        Assert.Matches(@"^Run completed in \d+\.\d{3} seconds\.$", result.OutputLines[1]);
        var written = Enumerable.Range(0, 10).Select(i => (3 + 5 * i) % Blocks).ToHashSet();
        var bytes = File.ReadAllBytes(image);
        for (var block = 0; block < Blocks; block++)
        {
            var expected = written.Contains(block) ? (byte)171 : (byte)0;
            Assert.True(bytes.AsSpan(block * Block, Block).IndexOfAnyExcept(expected) < 0, $"block {block} should hold {expected}");
        }
    }

    [Fact]
    public async Task Reads_leave_the_image_alone_and_flush_intervals_are_accepted()
    {
        var image = CreateImage();
        var before = File.ReadAllBytes(image);

        var result = await BlockMirrorCli.RunAsync("bench", "-c", "100", "-d", "8", "-s", "8K", "--flush-interval", "7", image);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.StartsWith("Sending 100 read requests, 8192 bytes each, 8 in parallel", result.OutputLines[0], StringComparison.Ordinal);
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [Theory]
    [InlineData(new[] { "-c", "0" }, "--count must be positive, got 0")]
    [InlineData(new[] { "-d", "-1" }, "--depth must be positive, got -1")]
    [InlineData(new[] { "-t", "unsafe" }, "--cache: unknown cache mode 'unsafe' (expected none or writeback)")]
    [InlineData(new[] { "-s", "1M" }, "is smaller than one request")]
    [InlineData(new[] { "-o", "256K" }, "--offset 262144 leaves no room")]
    public async Task Bad_options_are_refused_with_one_line(string[] options, string message)
    {
        var image = CreateImage();

        var result = await BlockMirrorCli.RunAsync(["bench", "-w", .. options, image]);

        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.StartsWith("blockmirror bench: ", result.ErrorLines[0], StringComparison.Ordinal);
        Assert.Contains(message, result.ErrorLines[0], StringComparison.Ordinal);
        Assert.True(File.ReadAllBytes(image).AsSpan().IndexOfAnyExcept((byte)0) < 0, "a refused bench wrote to the image");
    }
}
