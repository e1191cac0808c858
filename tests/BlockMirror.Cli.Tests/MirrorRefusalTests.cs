using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror mirror</c> refusing what it cannot do: exit 1, one line on stderr that names the problem,
/// nothing on stdout, and the target as it was (not created, or byte for byte unchanged).
/// </summary>
public sealed class MirrorRefusalTests : IDisposable
{
    const int Size = 4 << 20;

    readonly TempDirectory _dir = new("blockmirror-cli-test-");
    readonly string _source;

    public MirrorRefusalTests()
    {
        // Made without qemu-io: these tests need no external tool.
        _source = _dir.File("source.raw");
        WriteImage(_source, Size, 0xab, 0, 1 << 20);
    }

    public void Dispose() => _dir.Dispose();

    /// <summary>A sparse file of <paramref name="size"/> bytes with <paramref name="value"/> in [offset, offset + length).</summary>
    static void WriteImage(string path, long size, byte value, long offset, int length)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        stream.SetLength(size);
        stream.Position = offset;
        stream.Write(Enumerable.Repeat(value, length).ToArray());
    }

    string CreateStaleTarget(string name = "target.raw", long size = Size)
    {
        var target = _dir.File(name);
        WriteImage(target, size, 0x77, 0, (int)size);
        return target;
    }

    static void AssertRefused(CliResult result, string message)
    {
        Assert.True(result.ExitCode == 1, result.ToString());
        Assert.True(result.ErrorLines.Length == 1, $"expected one line on stderr:\n{result}");
        Assert.StartsWith("blockmirror mirror: ", result.ErrorLines[0], StringComparison.Ordinal);
        Assert.Contains(message, result.ErrorLines[0], StringComparison.Ordinal);
        Assert.True(result.StandardOutput.Length == 0, $"expected nothing on stdout:\n{result}");
    }

    public static TheoryData<string[], string> BadOptions => new()
    {
        { ["--sync", "bogus"], "unknown sync mode 'bogus' (expected full, top, none or bitmap)" },
        { ["--granularity", "3K"], "Parameter 'granularity' expects a power of 2" },
        { ["--granularity", "128M"], "Parameter 'granularity' expects a value in range [512B, 64MB]" },
        { ["--granularity", "256"], "Parameter 'granularity' expects a value in range [512B, 64MB]" },
        { ["--granularity", "big"], "invalid --granularity 'big'" },
        { ["--buf-size", "4G"], "Parameter 'buf-size' expects a value of at most 2147483647 bytes" },
        { ["--speed", "-1"], "invalid --speed '-1'" },
        { ["--speed", "-100M"], "invalid --speed '-100M'" },
        { ["--speed", "fast"], "invalid --speed 'fast'" },
        { ["--format", "vmdk"], "Unknown image format 'vmdk'" },
        { ["-f", "qcow2"], "Image is not in qcow2 format" },
        { ["--target-format", "vmdk"], "Unknown image format 'vmdk'" },
        { ["--cache", "directsync"], "--cache: unknown cache mode 'directsync' (expected auto, none or writeback)" },
        { ["--on-source-error", "bogus"], "--on-source-error: unknown error policy 'bogus' (expected report or ignore)" },
        { ["--on-target-error", "bogus"], "--on-target-error: unknown error policy 'bogus' (expected report or ignore)" },
        { ["--on-source-error", "stop"], "--on-source-error stop: a stopped job must be resumed over QMP; use report or ignore here, or run the job in 'blockmirror serve'" },
        { ["--on-target-error", "enospc"], "--on-target-error enospc: a stopped job must be resumed over QMP; use report or ignore here, or run the job in 'blockmirror serve'" },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public async Task A_refused_mirror_does_not_create_the_target(string[] options, string message)
    {
        var target = _dir.File("new.raw");

        var result = await BlockMirrorCli.RunAsync(["mirror", .. options, _source, target]);

        AssertRefused(result, message);
        Assert.False(File.Exists(target), $"the refused mirror left {target} behind");
    }

    [Theory]
    [MemberData(nameof(BadOptions))]
    public async Task A_refused_mirror_leaves_an_existing_target_unchanged(string[] options, string message)
    {
        var target = CreateStaleTarget();
        var before = QemuImages.Fingerprint(target);
        var sourceBefore = QemuImages.Fingerprint(_source);

        var result = await BlockMirrorCli.RunAsync(["mirror", .. options, _source, target]);

        AssertRefused(result, message);
        Assert.Equal(before, QemuImages.Fingerprint(target));
        Assert.Equal(sourceBefore, QemuImages.Fingerprint(_source));
    }

    [Fact]
    public async Task A_missing_source_is_named_and_nothing_is_created()
    {
        var missing = _dir.File("no-such.raw");
        var target = _dir.File("new.raw");

        var result = await BlockMirrorCli.RunAsync("mirror", missing, target);

        AssertRefused(result, $"Could not open '{missing}': No such file or directory");
        Assert.False(File.Exists(target));
    }

    [Fact]
    public async Task A_missing_source_leaves_an_existing_target_unchanged()
    {
        var target = CreateStaleTarget();
        var before = QemuImages.Fingerprint(target);

        var result = await BlockMirrorCli.RunAsync("mirror", _dir.File("no-such.raw"), target);

        AssertRefused(result, "No such file or directory");
        Assert.Equal(before, QemuImages.Fingerprint(target));
    }

    [Theory]
    [InlineData(1 << 20)]
    [InlineData(Size + 4096)]
    public async Task A_target_of_another_size_is_refused_and_left_unchanged(long targetSize)
    {
        var target = CreateStaleTarget("other-size.raw", targetSize);
        var before = QemuImages.Fingerprint(target);

        var result = await BlockMirrorCli.RunAsync("mirror", _source, target);

        AssertRefused(result, $"Source and target image have different sizes (source 'source' {Size} bytes, target 'target' {targetSize} bytes)");
        Assert.Equal(before, QemuImages.Fingerprint(target));
    }

    [Theory]
    [InlineData("source.raw", "source.raw")]
    [InlineData("source.raw", "./source.raw")]
    [InlineData("source.raw", "sub/../source.raw")]
    [InlineData("./sub/../source.raw", "{dir}/source.raw")]
    public async Task Source_and_target_the_same_file_is_refused(string source, string target)
    {
        Directory.CreateDirectory(_dir.File("sub"));
        var before = QemuImages.Fingerprint(_source);

        var result = await BlockMirrorCli.RunAsync(["mirror", source, target.Replace("{dir}", _dir.Path, StringComparison.Ordinal)], workingDirectory: _dir.Path);

        AssertRefused(result, "SOURCE and TARGET are the same file");
        Assert.Equal(before, QemuImages.Fingerprint(_source));
    }

    [SkippableTheory]
    [InlineData("symlink")]
    [InlineData("hardlink")]
    [InlineData("symlinked-directory")]
    public async Task A_link_to_the_source_as_target_is_refused_and_the_source_keeps_its_data(string kind)
    {
        // Mirrored onto itself, the source would be zeroed first (the target does not read as zeroes) and
        // lose its data, so the paths are not enough: the files must be compared.
        string target;
        switch (kind)
        {
            case "symlink":
                target = _dir.File("link.raw");
                File.CreateSymbolicLink(target, _source);
                break;
            case "hardlink":
                target = _dir.File("hard.raw");
                await ExternalTool.RunCheckedAsync("ln", _source, target);
                break;
            default:
                Directory.CreateSymbolicLink(_dir.File("linked-dir"), _dir.Path);
                target = Path.Combine(_dir.File("linked-dir"), "source.raw");
                break;
        }

        var before = QemuImages.Fingerprint(_source);

        var result = await BlockMirrorCli.RunAsync("mirror", _source, target);

        AssertRefused(result, "SOURCE and TARGET are the same file");
        Assert.Equal(before, QemuImages.Fingerprint(_source));
    }

    [Fact]
    public async Task A_target_format_this_build_cannot_write_is_refused_before_creating_it()
    {
        var target = _dir.File("new.vmdk");

        var result = await BlockMirrorCli.RunAsync("mirror", "-O", "vmdk", _source, target);

        AssertRefused(result, $"Unknown image format 'vmdk' for '{target}' (supported: raw, qcow2)");
        Assert.False(File.Exists(target));
    }

    [Fact]
    public async Task A_target_that_is_a_directory_is_refused_as_such()
    {
        var target = _dir.File("a-directory");
        Directory.CreateDirectory(target);

        var result = await BlockMirrorCli.RunAsync("mirror", _source, target);

        AssertRefused(result, $"TARGET '{target}' is a directory");
    }

    [Fact]
    public async Task A_target_in_a_missing_directory_is_refused()
    {
        var target = _dir.File("no-such-dir/new.raw");

        var result = await BlockMirrorCli.RunAsync("mirror", _source, target);

        AssertRefused(result, $"Could not create '{target}'");
        Assert.False(Directory.Exists(_dir.File("no-such-dir")));
    }

    [Fact]
    public async Task A_new_target_that_cannot_be_opened_with_o_direct_is_removed()
    {
        // O_DIRECT needs a 4 KiB multiple; the target is created with the source's odd size and then
        // refused when opened, after it was created: it must not stay behind.
        var odd = _dir.File("odd.raw");
        WriteImage(odd, 1_000_001, 0x42, 0, 4096);
        var target = _dir.File("new.raw");

        var result = await BlockMirrorCli.RunAsync("mirror", "--cache", "none", odd, target);

        AssertRefused(result, "is not a multiple of 4096");
        Assert.False(File.Exists(target), $"the refused mirror left {target} behind");
    }

    [Fact]
    public async Task By_default_an_image_o_direct_cannot_write_is_mirrored_through_the_page_cache()
    {
        // The default cache mode (auto) prefers O_DIRECT but must not refuse what the page cache can do.
        var odd = _dir.File("odd.raw");
        WriteImage(odd, 1_000_001, 0x42, 0, 4096);
        var target = _dir.File("new.raw");

        var result = await BlockMirrorCli.RunAsync("mirror", odd, target);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(File.ReadAllBytes(odd), File.ReadAllBytes(target));
    }
}
