using System.Security.Cryptography;
using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>Raw images made and checked with the real qemu-img and qemu-io, so no BlockMirror code judges its own output.</summary>
static class QemuImages
{
    /// <summary>Creates a sparse raw image of <paramref name="size"/> bytes and applies the qemu-io commands to it in order.</summary>
    public static async Task CreateAsync(string path, string size, params string[] qemuIoCommands)
    {
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "raw", path, size);
        if (qemuIoCommands.Length > 0)
        {
            var arguments = new List<string> { "-f", "raw" };
            foreach (var command in qemuIoCommands)
            {
                arguments.Add("-c");
                arguments.Add(command);
            }

            arguments.Add(path);
            var output = await ExternalTool.RunCheckedAsync("qemu-io", [.. arguments]);
            Assert.DoesNotContain("failed", output, StringComparison.OrdinalIgnoreCase);
        }
    }

    /// <summary>Fails unless <c>qemu-img compare</c> finds the two images (raw unless told) identical.</summary>
    public static async Task AssertIdenticalAsync(string expected, string actual, string expectedFormat = "raw", string actualFormat = "raw")
    {
        var result = await ExternalTool.RunAsync("qemu-img", ["compare", "-f", expectedFormat, "-F", actualFormat, expected, actual]);
        Assert.True(result.ExitCode == 0 && result.StandardOutput.Contains("Images are identical.", StringComparison.Ordinal),
            $"qemu-img compare {expected} {actual} exited {result.ExitCode}:\n{result.StandardOutput}{result.StandardError}");
    }

    /// <summary>The extents <c>qemu-img map --output=json</c> reports.</summary>
    public static async Task<IReadOnlyList<MapExtent>> MapAsync(string path)
    {
        var json = await ExternalTool.RunCheckedAsync("qemu-img", "map", "--output=json", "-f", "raw", path);
        using var document = JsonDocument.Parse(json);
        return [.. document.RootElement.EnumerateArray().Select(e => new MapExtent(
            e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(),
            e.GetProperty("zero").GetBoolean(), e.GetProperty("data").GetBoolean()))];
    }

    /// <summary>Bytes the file occupies on disk (<c>qemu-img info</c>'s actual-size).</summary>
    public static async Task<long> AllocatedBytesAsync(string path)
    {
        var json = await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", "-f", "raw", path);
        using var document = JsonDocument.Parse(json);
        return document.RootElement.GetProperty("actual-size").GetInt64();
    }

    /// <summary>A fingerprint of a file's bytes, to show that a refused command left it as it was.</summary>
    public static string Fingerprint(string path)
    {
        using var stream = File.OpenRead(path);
        return $"{stream.Length} bytes, sha256 {Convert.ToHexString(SHA256.HashData(stream))}";
    }
}

/// <summary>One extent of <c>qemu-img map --output=json</c>.</summary>
sealed record MapExtent(long Start, long Length, bool Zero, bool Data)
{
    public long End => Start + Length;
}
