using System.Diagnostics;
using Xunit;

namespace BlockMirror.TestKit;

/// <summary>
/// Finds the real tools interop tests drive (qemu-img, qemu-io, qemu-nbd, nbdinfo, nbdcopy, ...).
/// A missing tool skips the test locally, with the reason, and fails it when <c>CI=true</c>: in CI the
/// test command installs every tool, so a missing one is a broken setup, never a silent skip.
/// </summary>
public static class ExternalTool
{
    /// <summary>The tool's full path; skips (or, in CI, fails) the calling test when it is not installed.</summary>
    public static string Require(string name)
    {
        if (Find(name) is { } path)
        {
            return path;
        }

        var reason = $"'{name}' is not installed (./test.sh installs it)";
        if (IsCi)
        {
            throw new InvalidOperationException($"{reason}; CI=true, so interop tests must not skip");
        }

        Skip.If(true, reason);
        return name;
    }

    /// <summary>
    /// Skips (or, in CI, fails) the calling test unless it runs as root; <paramref name="reason"/> says what
    /// needs root (CI runs the tests as root).
    /// </summary>
    public static void RequireRoot(string reason)
    {
        if (Environment.IsPrivilegedProcess)
        {
            return;
        }

        if (IsCi)
        {
            throw new InvalidOperationException($"{reason}; CI=true, so interop tests must not skip");
        }

        Skip.If(true, reason);
    }

    public static bool IsCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    public static string? Find(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>Runs a tool to completion and returns its exit code and output.</summary>
    public static async Task<ToolResult> RunAsync(string tool, IEnumerable<string> arguments, TimeSpan? timeout = null, string? workingDirectory = null)
    {
        var path = Require(tool);
        var start = new ProcessStartInfo(path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {tool}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{tool} {string.Join(' ', start.ArgumentList)} did not finish in time");
        }

        return new ToolResult(process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a tool and fails the test with its output unless it exits 0.</summary>
    public static async Task<string> RunCheckedAsync(string tool, params string[] arguments)
    {
        var result = await RunAsync(tool, arguments);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} {string.Join(' ', arguments)} exited {result.ExitCode}:\n{result.StandardOutput}\n{result.StandardError}");
        }

        return result.StandardOutput;
    }
}

/// <summary>What a tool run printed and returned.</summary>
public sealed record ToolResult(int ExitCode, string StandardOutput, string StandardError);
