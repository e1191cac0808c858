using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror commit</c> against <c>qemu-img commit</c> on two copies of one chain (base &lt;- mid &lt;-
/// top, data, zeroes and discards at every level): the same guest views afterwards, clean images, the top
/// emptied only when it should be, and the same refusals.
/// </summary>
public sealed class CommitCommandTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-commit-test-");

    public void Dispose() => _dir.Dispose();

    /// <summary>Builds the chain in a folder; returns (base, mid, top).</summary>
    static async Task<string[]> ChainAsync(string folder)
    {
        ExternalTool.Require("qemu-io");
        Directory.CreateDirectory(folder);
        var paths = new[] { "base.qcow2", "mid.qcow2", "top.qcow2" }.Select(n => Path.Combine(folder, n)).ToArray();
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", paths[0], "4M");
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x10 0 3M", "-c", "write -z 1M 256k", paths[0]);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", paths[1]);
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x21 512k 300k", "-c", "discard 2M 128k", "-c", "write -P 0x22 3584k 4k", paths[1]);
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", paths[2]);
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x31 100k 20k", "-c", "write -z 600k 64k", "-c", "discard 3M 64k", paths[2]);
        return paths;
    }

    static async Task<string> ViewAsync(string image, string name)
    {
        var raw = Path.Combine(Path.GetDirectoryName(image)!, name + ".view.raw");
        await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", image, raw);
        return raw;
    }

    static async Task AssertSameViewAsync(string image, string raw)
    {
        var result = await ExternalTool.RunAsync("qemu-img", ["compare", "-F", "raw", image, raw]);
        Assert.True(result.ExitCode == 0, $"{image}: {result.StandardOutput}{result.StandardError}");
    }

    static async Task<long> OwnDataAsync(string image)
    {
        var map = JsonNode.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", image))!.AsArray();
        return map.Where(e => (int)e!["depth"]! == 0 && ((bool)e["data"]! || (bool)e["zero"]!)).Sum(e => (long)e!["length"]!);
    }

    [SkippableTheory]
    [InlineData("")]
    [InlineData("-d")]
    [InlineData("-b base.qcow2")]
    public async Task Commit_leaves_the_same_images_as_qemu_img_commit(string optionText)
    {
        var options = optionText.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var ours = await ChainAsync(_dir.File("ours"));
        var theirs = await ChainAsync(_dir.File("theirs"));
        var view = await ViewAsync(ours[2], "top");
        var baseIndex = options.Contains("-b") ? 0 : 1;
        string[] Resolve(string[] chain) => [.. options.Select(o => o.EndsWith(".qcow2", StringComparison.Ordinal) ? Path.Combine(Path.GetDirectoryName(chain[0])!, o) : o)];

        var q = await ExternalTool.RunAsync("qemu-img", ["commit", .. Resolve(theirs), theirs[2]]);
        Assert.True(q.ExitCode == 0, q.StandardError);
        var b = await BlockMirrorCli.RunAsync(["commit", .. Resolve(ours), ours[2]]);
        Assert.True(b.ExitCode == 0, b.ToString());
        Assert.Equal(q.StandardOutput.Trim(), b.StandardOutput.Trim());

        foreach (var chain in new[] { ours, theirs })
        {
            foreach (var image in chain)
            {
                Assert.Contains("No errors were found", await ExternalTool.RunCheckedAsync("qemu-img", "check", image));
            }

            // The base now holds the guest view the top had.
            await AssertSameViewAsync(chain[baseIndex], view);
        }

        // The top is emptied exactly when qemu-img empties it, and reads the same either way.
        Assert.Equal(await OwnDataAsync(theirs[2]) == 0, await OwnDataAsync(ours[2]) == 0);
        if (baseIndex == 1)
        {
            await AssertSameViewAsync(ours[2], view);
        }
    }

    [SkippableFact]
    public async Task Commit_refuses_an_image_without_backing_and_a_base_outside_the_chain()
    {
        var chain = await ChainAsync(_dir.File("chain"));
        var before = await File.ReadAllBytesAsync(chain[0]);

        var alone = await BlockMirrorCli.RunAsync("commit", chain[0]);
        Assert.NotEqual(0, alone.ExitCode);
        Assert.Contains("Image does not have a backing file", alone.StandardError);

        var outside = _dir.File("outside.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", outside, "4M");
        var wrong = await BlockMirrorCli.RunAsync("commit", "-b", outside, chain[2]);
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.Contains($"Did not find '{outside}' in the backing chain of '{chain[2]}'", wrong.StandardError);

        Assert.Equal(before, await File.ReadAllBytesAsync(chain[0]));
        Assert.True(await OwnDataAsync(chain[2]) > 0);
    }

    [SkippableFact]
    public async Task Commit_of_a_qcow2_overlay_named_img_matches_qemu_img_commit()
    {
        // Cloud images are qcow2 files named .img: the format comes from the content, not the name.
        var views = new List<string>();
        foreach (var side in new[] { "ours", "theirs" })
        {
            var chain = await ChainAsync(_dir.File(side));
            var top = Path.Combine(Path.GetDirectoryName(chain[2])!, "top.img");
            File.Move(chain[2], top);
            var view = await ViewAsync(top, "top");
            if (side == "ours")
            {
                var b = await BlockMirrorCli.RunAsync("commit", top);
                Assert.True(b.ExitCode == 0, b.ToString());
            }
            else
            {
                await ExternalTool.RunCheckedAsync("qemu-img", "commit", top);
            }

            Assert.Contains("No errors were found", await ExternalTool.RunCheckedAsync("qemu-img", "check", chain[1]));
            await AssertSameViewAsync(chain[1], view);
            await AssertSameViewAsync(top, view);
            views.Add(await ViewAsync(chain[1], "mid-after"));
        }

        await QemuImages.AssertIdenticalAsync(views[0], views[1]);
    }

    [SkippableFact]
    public async Task Commit_in_adaptive_mode_commits_with_the_mirror_progress_line()
    {
        var chain = await ChainAsync(_dir.File("adaptive"));
        var view = await ViewAsync(chain[2], "top");

        var result = await BlockMirrorCli.RunAsync("commit", "-p", "--copy-mode", "adaptive", chain[2]);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("Image committed.", result.OutputLines[^1]);
        Assert.NotEmpty(result.OutputLines[..^1]);
        Assert.All(result.OutputLines[..^1], line => Assert.Matches(CopyModeCommandTests.ProgressPattern, line));
        await AssertSameViewAsync(chain[1], view);
    }

    [SkippableFact]
    public async Task A_terminated_commit_exits_143_with_one_line_and_the_top_still_reads_as_before()
    {
        ExternalTool.Require("qemu-io");
        var @base = _dir.File("slow-base.qcow2");
        var top = _dir.File("slow-top.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", @base, "32M");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", "-b", "slow-base.qcow2", "-F", "qcow2", top);
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 16M", top);
        var before = await ViewAsync(top, "before");

        // 16 MiB at 2 MiB/s: signalled once the progress line shows it copying.
        var result = await SignalledRun.RunAsync(BlockMirrorCli.StartInfo(["commit", "-p", "-r", "2M", top]),
            line => System.Text.RegularExpressions.Regex.IsMatch(line, @"^\s*[1-9]\d* % "), "TERM");

        Assert.True(result.ExitCode == 143, result.ToString());
        Assert.Equal(["blockmirror commit: terminated"], result.ErrorLines);
        await AssertSameViewAsync(top, before);
        Assert.Equal(0, (await ExternalTool.RunAsync("qemu-img", ["check", "-q", @base])).ExitCode);
    }
}
