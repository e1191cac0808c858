using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary><c>blockmirror mirror</c> on real raw files made by qemu-io, checked with qemu-img.</summary>
public sealed class MirrorCommandTests : IDisposable
{
    const long Size = 32L << 20;
    const long K = 1024;
    const long M = 1024 * K;

    /// <summary>The source: data at the start, middle and end, a partial chunk, written zeroes (alone and inside data), holes.</summary>
    static readonly string[] SourceWrites =
    [
        "write -P 0xab 0 1M",
        "write -P 0xcd 5M 64k",
        "write -P 0x5a 8196k 4k",
        "write -z 12M 1M",
        "write -P 0xee 16M 256k",
        "write -z 16448k 64k",
        "write -P 0x11 32256k 512k",
    ];

    /// <summary>Ranges no write touched, at least a chunk away from any data: they must stay holes on a new target.</summary>
    static readonly (long Start, long End)[] NeverWritten =
    [
        (1 * M, 5 * M), (5 * M + 64 * K, 8 * M), (9 * M, 12 * M), (13 * M, 16 * M), (17 * M, 31 * M),
    ];

    /// <summary>Ranges that hold non-zero data in the source: they must be data on the target.</summary>
    static readonly (long Start, long End)[] Written =
    [
        (0, 1 * M), (5 * M, 5 * M + 64 * K), (8 * M + 4 * K, 8 * M + 8 * K), (16 * M, 16 * M + 64 * K),
        (16 * M + 128 * K, 16 * M + 256 * K), (31 * M + 512 * K, 32 * M),
    ];

    readonly TempDirectory _dir = new("blockmirror-cli-test-");

    public void Dispose() => _dir.Dispose();

    async Task<string> CreateSourceAsync()
    {
        var source = _dir.File("source.raw");
        await QemuImages.CreateAsync(source, "32M", SourceWrites);
        return source;
    }

    /// <summary>Exit 0 and nothing on stderr but, for an existing raw target given without -O, QEMU's warning that probing guessed raw.</summary>
    static void AssertSucceeded(CliResult result, string? probedRawTarget = null)
    {
        Assert.True(result.ExitCode == 0, result.ToString());
        string[] expected = probedRawTarget is null ? [] : [$"WARNING: Image format was not specified for '{probedRawTarget}' and probing guessed raw. " +
            "Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted. " +
            "Specify the 'raw' format explicitly to remove the restrictions."];
        Assert.True(result.ErrorLines.SequenceEqual(expected), result.ToString());
    }

    [SkippableFact]
    public async Task Mirror_to_and_from_qcow2_named_by_extension_gives_identical_images_qemu_img_checks_clean()
    {
        var source = await CreateSourceAsync();
        var qcow2 = _dir.File("target.qcow2");
        AssertSucceeded(await BlockMirrorCli.RunAsync("mirror", "--json", source, qcow2));
        var check = await ExternalTool.RunCheckedAsync("qemu-img", "check", qcow2);
        Assert.Contains("No errors were found on the image.", check);
        await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "raw", "-F", "qcow2", source, qcow2);

        // Holes stay unallocated in the qcow2 image: qemu-img map shows data only where the source has it.
        var map = await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", qcow2);
        Assert.Contains("\"start\": 1048576, \"length\": 4194304, \"depth\": 0, \"present\": false, \"zero\": true, \"data\": false", map);

        var back = _dir.File("back.raw");
        AssertSucceeded(await BlockMirrorCli.RunAsync("mirror", "--json", qcow2, back));
        await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", source, back);
    }

    [SkippableFact]
    public async Task Mirror_to_a_new_target_creates_an_identical_sparse_copy()
    {
        var source = await CreateSourceAsync();
        var target = _dir.File("target.raw");

        var result = await BlockMirrorCli.RunAsync("mirror", source, target);

        AssertSucceeded(result);
        Assert.Equal(Size, new FileInfo(target).Length);
        await QemuImages.AssertIdenticalAsync(source, target);

        var map = await QemuImages.MapAsync(target);
        foreach (var (start, end) in NeverWritten)
        {
            Assert.All(map.Where(e => e.Start < end && e.End > start),
                e => Assert.True(e.Zero && !e.Data, $"[{start}, {end}) was never written, but the target maps {e} there"));
        }

        foreach (var (start, end) in Written)
        {
            var covered = map.Where(e => e.Data && e.Start < end && e.End > start).Sum(e => Math.Min(e.End, end) - Math.Max(e.Start, start));
            Assert.True(covered == end - start, $"[{start}, {end}) holds data in the source; the target maps only {covered} bytes of it as data");
        }

        // The data is under 3 MiB (4 with the written zeroes, which the source may report as data).
        var allocated = await QemuImages.AllocatedBytesAsync(target);
        Assert.True(allocated < Size / 4, $"the target occupies {allocated} bytes of {Size}: not sparse");
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Mirror_onto_an_existing_target_replaces_stale_data_everywhere(bool noUnmap)
    {
        var source = await CreateSourceAsync();
        var target = _dir.File("stale.raw");
        await QemuImages.CreateAsync(target, "32M", "write -P 0x77 0 32M");

        var result = await BlockMirrorCli.RunAsync(noUnmap ? ["mirror", "--no-unmap", source, target] : ["mirror", source, target]);

        AssertSucceeded(result, probedRawTarget: target);
        Assert.Equal(Size, new FileInfo(target).Length);
        // The stale 0x77 bytes were everywhere, so this covers the source's holes and written zeroes too.
        await QemuImages.AssertIdenticalAsync(source, target);
    }

    [SkippableFact]
    public async Task Target_is_zero_keeps_a_preallocated_target_allocated_and_without_it_the_zeroes_are_punched()
    {
        var source = await CreateSourceAsync();
        var trusted = _dir.File("trusted.raw");
        var punched = _dir.File("punched.raw");
        foreach (var target in new[] { trusted, punched })
        {
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "raw", "-o", "preallocation=full", target, "32M");
        }

        AssertSucceeded(await BlockMirrorCli.RunAsync(["mirror", "-O", "raw", "--target-is-zero", source, trusted]));
        AssertSucceeded(await BlockMirrorCli.RunAsync(["mirror", "-O", "raw", source, punched]));

        await QemuImages.AssertIdenticalAsync(source, trusted);
        await QemuImages.AssertIdenticalAsync(source, punched);
        // The source's zero ranges were not written: the preallocated blocks stay; without the option they are punched.
        Assert.True(await QemuImages.AllocatedBytesAsync(trusted) >= Size);
        Assert.True(await QemuImages.AllocatedBytesAsync(punched) <= await QemuImages.AllocatedBytesAsync(source) + M);
    }

    [SkippableFact]
    public async Task Target_is_zero_is_taken_on_trust_so_a_target_holding_bytes_keeps_them_where_the_source_reads_zeroes()
    {
        var source = await CreateSourceAsync();
        var target = _dir.File("stale.raw");
        await QemuImages.CreateAsync(target, "32M", "write -P 0x77 0 32M");

        AssertSucceeded(await BlockMirrorCli.RunAsync(["mirror", "-O", "raw", "--target-is-zero", source, target]));

        // Data ranges are copied; a hole of the source (2M..3M) was never written to the target.
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", "-c", "read -P 0x77 2M 1M", target);
    }

    public static TheoryData<string[]> Options => new()
    {
        new[] { "--granularity", "4K" },
        new[] { "--granularity", "1M" },
        new[] { "--buf-size", "1M" },
        new[] { "--speed", "10G" },
        new[] { "--cache", "none" },
        new[] { "--cache", "writeback" },
        new[] { "--no-unmap" },
        new[] { "--sync", "top" },
        new[] { "-f", "raw", "-O", "raw" },
        new[] { "--granularity", "4K", "--buf-size", "1M", "--speed", "1G", "--cache", "none" },
    };

    [SkippableTheory]
    [MemberData(nameof(Options))]
    public async Task Mirror_options_produce_an_identical_image(string[] options)
    {
        var source = await CreateSourceAsync();
        var target = _dir.File("target.raw");

        var result = await BlockMirrorCli.RunAsync(["mirror", .. options, source, target]);

        AssertSucceeded(result);
        await QemuImages.AssertIdenticalAsync(source, target);
    }

    [SkippableFact]
    public async Task Sync_none_onto_an_identical_copy_copies_nothing_and_stays_identical()
    {
        var source = await CreateSourceAsync();
        var target = _dir.File("copy.raw");
        File.Copy(source, target);

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "none", source, target);

        AssertSucceeded(result, probedRawTarget: target);
        Assert.Equal($"mirrored 0 B from {source} to {target}", result.OutputLines[^1]);
        await QemuImages.AssertIdenticalAsync(source, target);
    }

    [SkippableFact]
    public async Task Sync_none_leaves_what_the_target_held()
    {
        // Nothing writes to the source during the job, so sync=none has nothing to copy.
        var source = await CreateSourceAsync();
        var target = _dir.File("stale.raw");
        await QemuImages.CreateAsync(target, "32M", "write -P 0x77 0 32M");
        var before = QemuImages.Fingerprint(target);

        var result = await BlockMirrorCli.RunAsync("mirror", "--sync", "none", source, target);

        AssertSucceeded(result, probedRawTarget: target);
        Assert.Equal(before, QemuImages.Fingerprint(target));
    }

    [SkippableFact]
    public async Task Progress_through_a_pipe_is_plain_lines()
    {
        var source = await CreateSourceAsync();
        var target = _dir.File("target.raw");

        // Slow enough (about 2 MiB of data at 2 MiB/s) for more than one progress sample.
        var result = await BlockMirrorCli.RunAsync("mirror", "--speed", "2M", source, target);

        AssertSucceeded(result);
        Assert.DoesNotContain('\r', result.StandardOutput);
        Assert.DoesNotContain('\u001b', result.StandardOutput);
        Assert.DoesNotContain("[#", result.StandardOutput, StringComparison.Ordinal);
        var lines = result.OutputLines;
        var progress = lines[..^1];
        Assert.All(progress, line => Assert.Matches(
            @"^\s*\d+ % \S+ \S+ / \S+ \S+  copy \S+ \S+/s  dirty \S+ \S+/s  remaining \S+ \S+  (ETA (\d\d:\d\d|--:--)|will not converge at this rate)  \S+$", line));
        Assert.Contains(progress, line => line.StartsWith("100 % ", StringComparison.Ordinal));
        Assert.Matches($@"^mirrored \S+ \S+ from {System.Text.RegularExpressions.Regex.Escape(source)} to {System.Text.RegularExpressions.Regex.Escape(target)}$", lines[^1]);

        // One plain line per second at most, plus the first and the final one.
        Assert.True(progress.Length <= result.Elapsed.TotalSeconds + 3, result.ToString());
        Assert.True(progress.Length >= 2, result.ToString());
        await QemuImages.AssertIdenticalAsync(source, target);
    }

    [Fact]
    public async Task The_file_engine_variable_chooses_io_uring_and_an_unknown_value_is_refused_before_the_target_exists()
    {
        var source = _dir.File("aio-source.raw");
        var data = new byte[4 << 20];
        new Random(7).NextBytes(data);
        await File.WriteAllBytesAsync(source, data);

        var target = _dir.File("aio-bogus.raw");
        var refused = await BlockMirrorCli.RunAsync(["mirror", source, target], environment: new Dictionary<string, string> { ["BLOCKMIRROR_AIO"] = "bogus" });
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("BLOCKMIRROR_AIO: unknown value 'bogus' (expected threads or io_uring)", refused.StandardError);
        Assert.DoesNotContain("   at ", refused.StandardError);
        Assert.False(File.Exists(target), refused.ToString());

        var copied = _dir.File("aio-uring.raw");
        var result = await BlockMirrorCli.RunAsync(["mirror", source, copied], environment: new Dictionary<string, string> { ["BLOCKMIRROR_AIO"] = "io_uring" });
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(data, await File.ReadAllBytesAsync(copied));
    }
}
