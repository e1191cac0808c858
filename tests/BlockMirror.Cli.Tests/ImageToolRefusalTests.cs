using System.Buffers.Binary;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The image tools on bad input: a missing file, a raw image given to check, a corrupt header, an unknown
/// option, a bad size. Each ends with one line on stderr, qemu-img's exit code, and no file created or
/// changed. These need no external tool.
/// </summary>
public sealed class ImageToolRefusalTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-refusal-test-");

    public void Dispose() => _dir.Dispose();

    static void AssertRefused(CliResult result, string command, int exitCode, string message)
    {
        Assert.True(result.ExitCode == exitCode, $"expected exit {exitCode}:\n{result}");
        SideBySide.AssertOneErrorLine(result, command, message);
        Assert.True(result.StandardOutput.Length == 0, $"expected nothing on stdout:\n{result}");
    }

    /// <summary>A qcow2 header that parses up to a field set to an impossible value.</summary>
    string CorruptHeader(string name, int offset, uint value)
    {
        var path = _dir.File(name);
        var header = new byte[512];
        BinaryPrimitives.WriteUInt32BigEndian(header, 0x514649fb);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(4), 3);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(20), 16);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(100), 104);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(offset), value);
        File.WriteAllBytes(path, header);
        return path;
    }

    public static TheoryData<string, int> MissingFile => new()
    {
        { "info", 1 }, { "map", 1 }, { "check", 1 }, { "resize", 1 }, { "compare", 2 },
    };

    [Theory]
    [MemberData(nameof(MissingFile))]
    public async Task A_missing_file_is_one_clear_line(string command, int exitCode)
    {
        var missing = _dir.File("missing.qcow2");
        string[] arguments = command switch
        {
            "compare" => [command, missing, missing],
            "resize" => [command, missing, "+1M"],
            _ => [command, missing],
        };

        var result = await BlockMirrorCli.RunAsync(arguments);

        AssertRefused(result, command, exitCode, $"Could not open '{missing}': No such file or directory");
        Assert.False(File.Exists(missing));
    }

    [Fact]
    public async Task A_raw_image_has_no_check()
    {
        var path = _dir.File("disk.raw");
        File.WriteAllBytes(path, new byte[1 << 20]);

        AssertRefused(await BlockMirrorCli.RunAsync("check", path), "check", 63, "This image format does not support checks");
        AssertRefused(await BlockMirrorCli.RunAsync("check", "-f", "raw", "--output=json", path), "check", 63, "This image format does not support checks");
    }

    public static TheoryData<string, int, uint, string> CorruptHeaders => new()
    {
        { "version", 4, 9, "Unsupported qcow2 version 9" },
        { "cluster_bits", 20, 40, "Unsupported cluster size: 2^40" },
        { "header_length", 100, 8, "qcow2 header too short" },
        { "refcount_order", 96, 7, "Reference count entry width too large; may not exceed 64 bits" },
    };

    [Theory]
    [MemberData(nameof(CorruptHeaders))]
    public async Task A_corrupt_header_is_one_clear_line(string field, int offset, uint value, string message)
    {
        var path = CorruptHeader($"{field}.qcow2", offset, value);
        var before = QemuImages.Fingerprint(path);

        foreach (var command in new[] { "info", "map", "check", "compare" })
        {
            var result = await BlockMirrorCli.RunAsync(command == "compare" ? [command, path, path] : [command, path]);
            AssertRefused(result, command, command == "compare" ? 2 : 1, $"Could not open '{path}': {message}");
        }

        Assert.Equal(before, QemuImages.Fingerprint(path));
    }

    [Fact]
    public async Task Garbage_is_raw_to_info_as_to_qemu_img()
    {
        // Without the qcow2 magic a file probes as raw, whatever its name says.
        var path = _dir.File("garbage.qcow2");
        File.WriteAllBytes(path, Enumerable.Repeat((byte)0xee, 4096).ToArray());

        var result = await BlockMirrorCli.RunAsync("info", path);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("file format: raw", result.OutputLines);
        AssertRefused(await BlockMirrorCli.RunAsync("check", path), "check", 63, "This image format does not support checks");
        AssertRefused(await BlockMirrorCli.RunAsync("info", "-f", "qcow2", path), "info", 1, $"Could not open '{path}': Image is not in qcow2 format");
    }

    public static TheoryData<string[], string> BadCreateLines => new()
    {
        { ["-f", "qcow2", "-o", "foo=bar", "new.qcow2", "1M"], "new.qcow2: Invalid parameter 'foo'" },
        { ["-f", "raw", "-o", "cluster_size=4k", "new.qcow2", "1M"], "new.qcow2: Invalid parameter 'cluster_size'" },
        { ["-f", "qcow2", "new.qcow2", "1x"], "invalid image size '1x'" },
        { ["-f", "qcow2", "new.qcow2", "lots"], "invalid image size 'lots'" },
        { ["-f", "qcow2", "new.qcow2"], "new.qcow2: Image creation needs a size parameter" },
        { ["-f", "vmdk", "new.qcow2", "1M"], "Unknown file format 'vmdk'" },
        { ["-f", "qcow2", "new.qcow2", "4P"], "new.qcow2: The image size is too large for file format 'qcow2' (try using a larger cluster size)" },
        { ["-f", "qcow2", "-o", "cluster_size=512", "new.qcow2", "1P"], "new.qcow2: The image size is too large for file format 'qcow2' (try using a larger cluster size)" },
        { ["-f", "qcow2", "-o", "compat=2", "new.qcow2", "1M"], "Parameter 'compat' does not accept value '2'" },
        { ["-f", "qcow2", "-o", "lazy_refcounts=maybe", "new.qcow2", "1M"], "Parameter 'lazy_refcounts' expects 'on' or 'off'" },
        { ["-f", "qcow2", "-o", "refcount_bits=many", "new.qcow2", "1M"], "Parameter 'refcount_bits' expects a number" },
        { ["-f", "qcow2", "-o", "extended_l2=on", "new.qcow2", "1M"], "Parameter 'extended_l2=on' is not supported" },
        { ["-f", "qcow2", "-o", "compression_type=zstd", "new.qcow2", "1M"], "Parameter 'compression_type=zstd' is not supported" },
        { ["-f", "qcow2", "-o", "preallocation=full", "new.qcow2", "1M"], "Parameter 'preallocation=full' is not supported" },
        { ["-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2", "new.qcow2"], "Could not open backing image 'missing.qcow2'" },
        { ["-f", "qcow2", "-b", "new.qcow2", "-F", "qcow2", "new.qcow2", "1M"], "same filename as the backing file" },
        { ["-f", "qcow2", "-o", "backing_fmt=qcow2", "new.qcow2", "1M"], "backing_fmt is only valid with backing_file" },
        { ["-f", "qcow2"], "Expecting image file name" },
    };

    [Theory]
    [MemberData(nameof(BadCreateLines))]
    public async Task A_refused_create_creates_nothing(string[] line, string message)
    {
        var result = await BlockMirrorCli.RunAsync(["create", .. line], _dir.Path);

        Assert.True(result.ExitCode == 1, result.ToString());
        SideBySide.AssertOneErrorLine(result, "create", message);
        Assert.Empty(Directory.GetFileSystemEntries(_dir.Path));
    }

    public static TheoryData<string[], string> BadQcow2Options => new()
    {
        { ["-o", "cluster_size=3000"], "Cluster size must be a power of two between 512 and 2048k" },
        { ["-o", "cluster_size=4M"], "Cluster size must be a power of two between 512 and 2048k" },
        { ["-o", "refcount_bits=3"], "Refcount width must be a power of two and may not exceed 64 bits" },
        { ["-o", "compat=0.10,lazy_refcounts=on"], "Lazy refcounts only supported with compatibility level 1.1 and above" },
        { ["-o", "compat=0.10,refcount_bits=8"], "Different refcount widths than 16 bits require compatibility level 1.1 or above" },
    };

    [Theory]
    [MemberData(nameof(BadQcow2Options))]
    public async Task Invalid_qcow2_options_leave_an_existing_file_alone(string[] options, string message)
    {
        var path = _dir.File("old.qcow2");
        File.WriteAllBytes(path, Enumerable.Repeat((byte)0x42, 8192).ToArray());
        var before = QemuImages.Fingerprint(path);

        var result = await BlockMirrorCli.RunAsync(["create", "-f", "qcow2", .. options, path, "1M"]);

        Assert.True(result.ExitCode == 1, result.ToString());
        // qemu-img prints its Formatting line before the format refuses the options; so do we.
        Assert.StartsWith($"Formatting '{path}', fmt=qcow2 ", result.StandardOutput, StringComparison.Ordinal);
        SideBySide.AssertOneErrorLine(result, "create", $"{path}: {message}");
        Assert.Equal(before, QemuImages.Fingerprint(path));
        Assert.Single(Directory.GetFileSystemEntries(_dir.Path));
    }

    [Fact]
    public async Task Bad_option_values_are_one_clear_line()
    {
        var path = _dir.File("disk.raw");
        File.WriteAllBytes(path, new byte[1 << 20]);
        var before = QemuImages.Fingerprint(path);

        AssertRefused(await BlockMirrorCli.RunAsync("info", "--output=xml", path), "info", 1, "--output: unknown output format 'xml' (expected human or json)");
        AssertRefused(await BlockMirrorCli.RunAsync("map", "--output=yaml", path), "map", 1, "--output: unknown output format 'yaml'");
        AssertRefused(await BlockMirrorCli.RunAsync("check", "-r", "bogus", path), "check", 1, "Unknown option value for -r (expecting 'leaks' or 'all'): bogus");
        AssertRefused(await BlockMirrorCli.RunAsync("info", "-f", "vmdk", path), "info", 1, "Unknown image format 'vmdk'");
        AssertRefused(await BlockMirrorCli.RunAsync("compare", "-f", "vmdk", path, path), "compare", 2, "Unknown image format 'vmdk'");
        AssertRefused(await BlockMirrorCli.RunAsync("resize", path, "big"), "resize", 1, "invalid size 'big'");
        AssertRefused(await BlockMirrorCli.RunAsync("resize", path, "--", "-2M"), "resize", 1, "New image size must be positive.");
        Assert.Equal(before, QemuImages.Fingerprint(path));
    }

    [Fact]
    public async Task Create_lists_its_options_without_a_file_name()
    {
        var result = await BlockMirrorCli.RunAsync(["create", "-f", "qcow2", "-o", "help"], _dir.Path);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("Supported qcow2 options:", result.OutputLines[0]);
        Assert.Contains(result.OutputLines, l => l.StartsWith("  cluster_size=<size>", StringComparison.Ordinal));
        Assert.Empty(Directory.GetFileSystemEntries(_dir.Path));
    }

    [Fact]
    public async Task Create_into_a_directory_is_refused()
    {
        var result = await BlockMirrorCli.RunAsync("create", "-f", "qcow2", _dir.Path, "1M");

        AssertRefused(result, "create", 1, "Is a directory");
    }

    [Fact]
    public async Task Created_images_read_back_with_our_own_tools()
    {
        // No qemu-img here: create, info, map, check and compare agree with each other.
        var raw = _dir.File("a.raw");
        var qcow2 = _dir.File("a.qcow2");
        Assert.Equal(0, (await BlockMirrorCli.RunAsync("create", "-q", "-f", "raw", raw, "3M")).ExitCode);
        Assert.Equal(0, (await BlockMirrorCli.RunAsync("create", "-q", "-f", "qcow2", qcow2, "3M")).ExitCode);

        var info = await BlockMirrorCli.RunAsync("info", qcow2);
        Assert.Contains("virtual size: 3 MiB (3145728 bytes)", info.OutputLines);
        Assert.Contains("cluster_size: 65536", info.OutputLines);
        var map = await BlockMirrorCli.RunAsync("map", "--output=json", qcow2);
        Assert.Equal("[{ \"start\": 0, \"length\": 3145728, \"depth\": 0, \"present\": false, \"zero\": true, \"data\": false}]\n", map.StandardOutput);
        var check = await BlockMirrorCli.RunAsync("check", qcow2);
        Assert.True(check.ExitCode == 0, check.ToString());
        Assert.Contains("No errors were found on the image.", check.OutputLines);
        var compare = await BlockMirrorCli.RunAsync("compare", raw, qcow2);
        Assert.True(compare.ExitCode == 0 && compare.StandardOutput == "Images are identical.\n", compare.ToString());
    }
}
