using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>Runs one qemu-img command and the same blockmirror command, and compares what they print.</summary>
static class SideBySide
{
    /// <summary>The two runs of one command line.</summary>
    public sealed record Runs(ToolResult Qemu, CliResult Ours, string Context)
    {
        public override string ToString() =>
            $"{Context}\n--- qemu-img (exit {Qemu.ExitCode}):\n{Qemu.StandardOutput}{Qemu.StandardError}\n--- blockmirror:\n{Ours}";
    }

    /// <summary>
    /// <c>qemu-img ARGS</c> and <c>blockmirror ARGS</c>, both in <paramref name="workingDirectory"/>. The
    /// context (recipe description) goes into every failure message.
    /// </summary>
    public static async Task<Runs> RunAsync(string context, string? workingDirectory, params string[] arguments)
    {
        var qemu = await ExternalTool.RunAsync("qemu-img", arguments, workingDirectory: workingDirectory);
        var ours = await BlockMirrorCli.RunAsync(arguments, workingDirectory);
        return new Runs(qemu, ours, $"{context}\n$ {string.Join(' ', arguments)}");
    }

    /// <summary>Same exit code, same standard output.</summary>
    public static void AssertSameOutput(Runs runs)
    {
        Assert.True(runs.Qemu.ExitCode == runs.Ours.ExitCode, $"exit codes differ: {runs}");
        Assert.True(runs.Qemu.StandardOutput == runs.Ours.StandardOutput, $"stdout differs: {runs}");
    }

    /// <summary>
    /// Compares two JSON values field by field: objects must have the same keys (minus <paramref name="ignore"/>)
    /// and equal values, arrays the same length and equal elements. The message names the path that differs.
    /// </summary>
    public static void AssertSameJson(JsonElement expected, JsonElement actual, string context, string path = "$", IReadOnlySet<string>? ignore = null)
    {
        Assert.True(expected.ValueKind == actual.ValueKind, $"{path}: qemu-img has {expected.ValueKind} {expected}, blockmirror {actual.ValueKind} {actual}\n{context}");
        switch (expected.ValueKind)
        {
            case JsonValueKind.Object:
                var expectedKeys = expected.EnumerateObject().Select(p => p.Name).Where(k => ignore?.Contains(k) != true).Order().ToList();
                var actualKeys = actual.EnumerateObject().Select(p => p.Name).Where(k => ignore?.Contains(k) != true).Order().ToList();
                Assert.True(expectedKeys.SequenceEqual(actualKeys),
                    $"{path}: qemu-img has keys [{string.Join(", ", expectedKeys)}], blockmirror [{string.Join(", ", actualKeys)}]\n{context}");
                foreach (var key in expectedKeys)
                {
                    AssertSameJson(expected.GetProperty(key), actual.GetProperty(key), context, $"{path}.{key}", ignore);
                }

                break;
            case JsonValueKind.Array:
                Assert.True(expected.GetArrayLength() == actual.GetArrayLength(),
                    $"{path}: qemu-img has {expected.GetArrayLength()} elements, blockmirror {actual.GetArrayLength()}\n{context}");
                for (var i = 0; i < expected.GetArrayLength(); i++)
                {
                    AssertSameJson(expected[i], actual[i], context, $"{path}[{i}]", ignore);
                }

                break;
            default:
                Assert.True(expected.GetRawText() == actual.GetRawText(), $"{path}: qemu-img says {expected.GetRawText()}, blockmirror {actual.GetRawText()}\n{context}");
                break;
        }
    }

    /// <summary>Both runs succeeded (or failed alike) and printed JSON holding the same fields with the same values.</summary>
    public static void AssertSameJsonOutput(Runs runs, IReadOnlySet<string>? ignore = null)
    {
        Assert.True(runs.Qemu.ExitCode == runs.Ours.ExitCode, $"exit codes differ: {runs}");
        using var expected = JsonDocument.Parse(runs.Qemu.StandardOutput);
        using var actual = JsonDocument.Parse(runs.Ours.StandardOutput);
        AssertSameJson(expected.RootElement, actual.RootElement, runs.ToString(), ignore: ignore);
    }

    /// <summary>The one line blockmirror prints on stderr for a refusal: <c>blockmirror COMMAND: ...</c>.</summary>
    public static void AssertOneErrorLine(CliResult result, string command, string contains)
    {
        Assert.True(result.ErrorLines.Length == 1, $"expected one line on stderr:\n{result}");
        Assert.StartsWith($"blockmirror {command}: ", result.ErrorLines[0], StringComparison.Ordinal);
        Assert.Contains(contains, result.ErrorLines[0], StringComparison.Ordinal);
    }
}
