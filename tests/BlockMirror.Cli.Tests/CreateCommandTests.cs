using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror create</c> and <c>resize</c> side by side with <c>qemu-img create</c> and <c>resize</c>: the
/// same output, and images that qemu-img checks clean, describes the same way, and qemu-io writes into.
/// </summary>
public sealed class CreateCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-create-test-");

    public void Dispose() => _dir.Dispose();

    /// <summary>qemu-img's and our directory: the same command line runs in each, on the same relative names.</summary>
    (string Qemu, string Ours) Directories()
    {
        var qemu = Path.Combine(_dir.Path, "qemu");
        var ours = Path.Combine(_dir.Path, "ours");
        Directory.CreateDirectory(qemu);
        Directory.CreateDirectory(ours);
        return (qemu, ours);
    }

    public static TheoryData<string[]> CreateLines => new()
    {
        new[] { "-f", "qcow2", "img.qcow2", "4M" },
        new[] { "-f", "qcow2", "img.qcow2", "1000" },
        new[] { "-f", "qcow2", "img.qcow2", "1.5M" },
        new[] { "-f", "qcow2", "-o", "cluster_size=512", "img.qcow2", "2M" },
        new[] { "-f", "qcow2", "-o", "cluster_size=2M", "img.qcow2", "9M" },
        new[] { "-f", "qcow2", "-o", "compat=0.10", "img.qcow2", "4M" },
        new[] { "-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=64,cluster_size=2M", "img.qcow2", "10M" },
        new[] { "-f", "qcow2", "-o", "cluster_size=4k", "-o", "refcount_bits=8", "img.qcow2", "1M" },
        new[] { "-f", "qcow2", "-o", "refcount_bits=1", "img.qcow2", "64M" },
        new[] { "-f", "qcow2", "-o", "size=2M", "img.qcow2" },
        new[] { "-f", "qcow2", "img.qcow2", "100T" },
        new[] { "-q", "-f", "qcow2", "img.qcow2", "1M" },
        new[] { "-f", "raw", "img.raw", "1000" },
        new[] { "-f", "raw", "img.raw", "3M" },
    };

    [SkippableTheory]
    [MemberData(nameof(CreateLines))]
    public async Task Create_prints_and_makes_what_qemu_img_makes(string[] line)
    {
        ExternalTool.Require("qemu-img");
        var (qemuDir, oursDir) = Directories();
        var image = line.First(a => a.StartsWith("img.", StringComparison.Ordinal));
        var context = $"create {string.Join(' ', line)}";

        var qemu = await ExternalTool.RunAsync("qemu-img", ["create", .. line], workingDirectory: qemuDir);
        var ours = await BlockMirrorCli.RunAsync(["create", .. line], oursDir);

        Assert.True(qemu.ExitCode == 0 && ours.ExitCode == 0 && ours.StandardError.Length == 0, $"{context}\nqemu-img: {qemu.StandardOutput}{qemu.StandardError}\nours: {ours}");
        Assert.Equal(qemu.StandardOutput, ours.StandardOutput);
        await AssertSameImageAsync(Path.Combine(qemuDir, image), Path.Combine(oursDir, image), context);
    }

    /// <summary>qemu-img check finds ours clean, info describes both alike, and both take the same writes to the same content.</summary>
    static async Task AssertSameImageAsync(string qemuImage, string ourImage, string context)
    {
        var format = ourImage.EndsWith(".raw", StringComparison.Ordinal) ? "raw" : "qcow2";
        if (format == "qcow2")
        {
            var check = await ExternalTool.RunAsync("qemu-img", ["check", ourImage]);
            Assert.True(check.ExitCode == 0, $"{context}: qemu-img check on our image exits {check.ExitCode}\n{check.StandardOutput}{check.StandardError}");
        }

        var info = await ExternalTool.RunAsync("qemu-img", ["info", "--output=json", "--backing-chain", qemuImage]);
        var ourInfo = await ExternalTool.RunAsync("qemu-img", ["info", "--output=json", "--backing-chain", ourImage]);
        using (var expected = JsonDocument.Parse(info.StandardOutput.Replace(Path.GetDirectoryName(qemuImage)!, "DIR", StringComparison.Ordinal)))
        using (var actual = JsonDocument.Parse(ourInfo.StandardOutput.Replace(Path.GetDirectoryName(ourImage)!, "DIR", StringComparison.Ordinal)))
        {
            SideBySide.AssertSameJson(expected.RootElement, actual.RootElement, $"{context}: qemu-img info", ignore: new HashSet<string> { "actual-size" });
        }

        string[] writes = ["write -P 0x5c 0 4k", "write -P 0x5d 512k 64k", "write -z 600k 64k"];
        using (var size = JsonDocument.Parse(ourInfo.StandardOutput))
        {
            if (size.RootElement[0].GetProperty("virtual-size").GetInt64() < 1 << 20)
            {
                return;
            }
        }

        await ImageRecipes.QemuIoAsync(qemuImage, format, writes);
        await ImageRecipes.QemuIoAsync(ourImage, format, writes);
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", format, "-F", format, qemuImage, ourImage]);
        Assert.True(compare.ExitCode == 0, $"{context}: after the same writes qemu-img compare says {compare.StandardOutput}{compare.StandardError}");
        if (format == "qcow2")
        {
            Assert.Equal(0, (await ExternalTool.RunAsync("qemu-img", ["check", ourImage])).ExitCode);
        }
    }

    [SkippableTheory]
    [InlineData("-b", "base.qcow2", "-F", "qcow2")]
    [InlineData("-b", "base.qcow2", "-F", "qcow2", "8M")]
    [InlineData("-b", "base.qcow2", "-F", "raw")]
    [InlineData("-o", "backing_file=base.qcow2,backing_fmt=qcow2")]
    [InlineData("-o", "backing_file=base.qcow2,backing_fmt=qcow2,cluster_size=4k")]
    public async Task Overlays_are_created_as_qemu_img_creates_them(params string[] backing)
    {
        ExternalTool.Require("qemu-img");
        var (qemuDir, oursDir) = Directories();
        foreach (var dir in new[] { qemuDir, oursDir })
        {
            await ImageRecipes.Qcow2Async(dir, "base.qcow2", "4M", [], ["write -P 0x11 0 64k"]);
        }

        var size = backing.Where(a => a.EndsWith('M')).ToArray();
        string[] line = ["-f", "qcow2", .. backing.Except(size), "top.qcow2", .. size];
        var context = $"create {string.Join(' ', line)}";
        var qemu = await ExternalTool.RunAsync("qemu-img", ["create", .. line], workingDirectory: qemuDir);
        var ours = await BlockMirrorCli.RunAsync(["create", .. line], oursDir);

        Assert.True(qemu.ExitCode == 0 && ours.ExitCode == 0, $"{context}\nqemu-img: {qemu.StandardOutput}{qemu.StandardError}\nours: {ours}");
        Assert.Equal(qemu.StandardOutput, ours.StandardOutput);
        await AssertSameImageAsync(Path.Combine(qemuDir, "top.qcow2"), Path.Combine(oursDir, "top.qcow2"), context);
    }

    [SkippableFact]
    public async Task A_missing_backing_format_is_probed_and_recorded()
    {
        ExternalTool.Require("qemu-img");
        var (_, dir) = Directories();
        await ImageRecipes.Qcow2Async(dir, "base.qcow2", "4M", [], ["write -P 0x11 0 64k"]);

        var result = await BlockMirrorCli.RunAsync(["create", "-f", "qcow2", "-b", "base.qcow2", "top.qcow2"], dir);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("Formatting 'top.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 " +
            "backing_file=base.qcow2 backing_fmt=qcow2 lazy_refcounts=off refcount_bits=16\n", result.StandardOutput);
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", Path.Combine(dir, "top.qcow2")));
        Assert.Equal("qcow2", info.RootElement.GetProperty("backing-filename-format").GetString());
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", Path.Combine(dir, "base.qcow2"), Path.Combine(dir, "top.qcow2")]);
        Assert.Equal(0, compare.ExitCode);
    }

    [SkippableFact]
    public async Task An_existing_file_is_replaced_as_qemu_img_replaces_it()
    {
        ExternalTool.Require("qemu-img");
        var path = _dir.File("img.qcow2");
        await File.WriteAllBytesAsync(path, Enumerable.Repeat((byte)0x77, 1 << 20).ToArray());

        var result = await BlockMirrorCli.RunAsync("create", "-f", "qcow2", path, "2M");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(0, (await ExternalTool.RunAsync("qemu-img", ["check", path])).ExitCode);
        Assert.Single(Directory.GetFiles(_dir.Path));
    }

    /// <summary>
    /// A raw image larger than the file system takes (here the process's file size limit): both tools say so in
    /// qemu-img's words. A deliberate difference, pinned: qemu-img truncates the existing file before the resize
    /// fails; ours writes beside it, so the file is left as it was and nothing else is left behind.
    /// </summary>
    [SkippableFact]
    public async Task A_size_the_file_system_refuses_is_told_in_qemu_img_s_words_and_the_existing_file_stays()
    {
        var qemuImg = ExternalTool.Require("qemu-img");
        var kept = "what the user kept here\n"u8.ToArray();
        var results = new List<string>();
        var left = new List<byte[]>();
        foreach (var (name, command) in new[] { ("qemu-img", new[] { qemuImg }), ("ours", BlockMirrorCli.Launcher.ToArray()) })
        {
            var dir = Directory.CreateDirectory(Path.Combine(_dir.Path, name)).FullName;
            await File.WriteAllBytesAsync(Path.Combine(dir, "disk.img"), kept);
            var result = await ExternalTool.RunAsync(FileSizeLimit.Shell, FileSizeLimit.Arguments(1 << 20, [.. command, "create", "-q", "-f", "raw", "disk.img", "8M"]),
                workingDirectory: dir);
            Assert.True(result.ExitCode == 1, result.StandardOutput + result.StandardError);
            results.Add(result.StandardError.Trim().Split(": ", 2)[1]);
            left.Add(await File.ReadAllBytesAsync(Path.Combine(dir, "disk.img")));
            if (name == "ours")
            {
                Assert.Equal(["disk.img"], Directory.GetFiles(dir).Select(Path.GetFileName));
            }
        }

        Assert.Equal("disk.img: The image size is too large for file format 'raw'", results[0]);
        Assert.Equal(results[0], results[1]);
        Assert.True(left[0].Length == 0, "qemu-img no longer truncates the existing file before the size fails: the pinned difference is gone");
        Assert.Equal(kept, left[1]);
    }

    [SkippableTheory]
    [InlineData("qcow2", "4M", "+2M", "6M")]
    [InlineData("qcow2", "4M", "5M", "5M")]
    [InlineData("qcow2", "4M", "4M", "4M")]
    [InlineData("raw", "4M", "+1M", "5M")]
    public async Task Resize_grows_as_qemu_img_resize_does(string format, string size, string change, string expected)
    {
        var path = format == "raw"
            ? _dir.File("img.raw")
            : await ImageRecipes.Qcow2Async(_dir.Path, "img.qcow2", size, [], ["write -P 0x11 0 64k", "write -P 0x22 4032k 64k"]);
        if (format == "raw")
        {
            await QemuImages.CreateAsync(path, size, "write -P 0x11 0 64k", "write -P 0x22 4032k 64k");
        }

        var before = await FlatAsync(path, "before.raw");
        var result = await BlockMirrorCli.RunAsync("resize", "-f", format, path, change);

        Assert.True(result.ExitCode == 0 && result.StandardOutput == "Image resized.\n", result.ToString());
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", "-f", format, path));
        Assert.Equal(long.Parse(expected[..^1], System.Globalization.CultureInfo.InvariantCulture) << 20, info.RootElement.GetProperty("virtual-size").GetInt64());
        if (format == "qcow2")
        {
            Assert.Equal(0, (await ExternalTool.RunAsync("qemu-img", ["check", path])).ExitCode);
        }

        // The old content is still there, and the new part reads as zeroes.
        var compare = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", format, before, path]);
        Assert.True(compare.ExitCode == 0, compare.StandardOutput + compare.StandardError);
    }

    async Task<string> FlatAsync(string path, string name)
    {
        var flat = _dir.File(name);
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", path, flat);
        return flat;
    }

    [SkippableFact]
    public async Task Resize_shrinks_raw_only_with_shrink()
    {
        ExternalTool.Require("qemu-img");
        var path = _dir.File("img.raw");
        await QemuImages.CreateAsync(path, "4M");

        var refused = await BlockMirrorCli.RunAsync("resize", "-f", "raw", path, "1M");
        Assert.Equal(1, refused.ExitCode);
        SideBySide.AssertOneErrorLine(refused, "resize", "Use the --shrink option to perform a shrink operation.");
        Assert.Equal(4L << 20, new FileInfo(path).Length);

        var shrunk = await BlockMirrorCli.RunAsync("resize", "-f", "raw", "--shrink", path, "--", "-1M");
        Assert.True(shrunk.ExitCode == 0, shrunk.ToString());
        Assert.Equal(3L << 20, new FileInfo(path).Length);
    }

    /// <summary>
    /// create writes the image beside FILE and renames it over it: the new file must be on the disk before the rename
    /// and the rename before the command ends (traced with strace: fsync of the new file, rename, then a flush of
    /// the directory), or a power loss could leave FILE named but empty where the old image was.
    /// </summary>
    [SkippableFact]
    public async Task Create_over_an_existing_file_flushes_the_new_image_before_the_rename_and_the_directory_after()
    {
        ExternalTool.Require("strace");
        var path = _dir.File("img.qcow2");
        await File.WriteAllBytesAsync(path, new byte[4096]);
        var trace = _dir.File("create.strace");
        var launcher = BlockMirrorCli.Launcher;
        var result = await ExternalTool.RunAsync("strace", ["-f", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,openat", "-o", trace,
            .. launcher, "create", "-q", "-f", "qcow2", path, "1M"]);
        Assert.True(result.ExitCode == 0, result.StandardOutput + result.StandardError);

        // The descriptors the new file and the directory were opened under, and the order of what followed.
        var lines = await File.ReadAllLinesAsync(trace);
        var dir = Path.GetDirectoryName(path)!;
        var events = new List<string>();
        var fds = new Dictionary<string, string>();
        foreach (var line in lines)
        {
            var opened = System.Text.RegularExpressions.Regex.Match(line, @"openat\(AT_FDCWD, ""([^""]+)"".*\) = (\d+)$");
            if (opened.Success)
            {
                fds[opened.Groups[2].Value] = opened.Groups[1].Value;
                continue;
            }

            var synced = System.Text.RegularExpressions.Regex.Match(line, @"(fsync|fdatasync)\((\d+)\)\s+= 0");
            if (synced.Success && fds.TryGetValue(synced.Groups[2].Value, out var what))
            {
                events.Add(what == dir ? "sync directory" : what.EndsWith(".tmp", StringComparison.Ordinal) ? "sync new file" : $"sync {what}");
            }
            else if (line.Contains("rename", StringComparison.Ordinal) && line.Contains(path + "\"", StringComparison.Ordinal) && line.EndsWith("= 0", StringComparison.Ordinal))
            {
                events.Add("rename");
            }
        }

        var order = string.Join(", ", events.Where(e => e is "sync new file" or "rename" or "sync directory"));
        Assert.True(order.EndsWith("sync new file, rename, sync directory", StringComparison.Ordinal), $"order seen: {order}\n{string.Join('\n', lines.Where(l => !l.Contains("ENOENT", StringComparison.Ordinal)).TakeLast(40))}");
        Assert.Equal(0, (await ExternalTool.RunAsync("qemu-img", ["check", path])).ExitCode);
    }
}
