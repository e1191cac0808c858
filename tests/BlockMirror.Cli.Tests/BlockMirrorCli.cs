using System.Diagnostics;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Starts the real <c>blockmirror</c> command as its own process (<c>dotnet blockmirror.dll ...</c>, the dll
/// copied next to the tests by the project reference) and captures what a user would see. Output is
/// redirected, so the command takes its non-terminal paths (plain progress lines).
/// </summary>
static class BlockMirrorCli
{
    static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The command's dll, next to the test assembly.</summary>
    public static string DllPath { get; } = Path.Combine(AppContext.BaseDirectory, "blockmirror.dll");

    /// <summary>Runs <c>blockmirror</c> with the arguments and waits for it to exit; kills it and throws on timeout.</summary>
    public static async Task<CliResult> RunAsync(IEnumerable<string> arguments, string? workingDirectory = null, TimeSpan? timeout = null)
    {
        if (!File.Exists(DllPath) || !File.Exists(Path.ChangeExtension(DllPath, ".runtimeconfig.json")))
        {
            throw new InvalidOperationException($"{DllPath} (or its runtimeconfig.json) is missing: the project reference to BlockMirror.Cli should copy it");
        }

        var start = new ProcessStartInfo(DotnetHost())
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        start.ArgumentList.Add(DllPath);
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start dotnet");
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? DefaultTimeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            throw new TimeoutException($"blockmirror {string.Join(' ', start.ArgumentList.Skip(1))} did not exit within {timeout ?? DefaultTimeout}:\n" +
                $"stdout:\n{await stdout}\nstderr:\n{await stderr}");
        }

        return new CliResult(process.ExitCode, await stdout, await stderr, clock.Elapsed);
    }

    public static Task<CliResult> RunAsync(params string[] arguments) => RunAsync((IEnumerable<string>)arguments);

    /// <summary>
    /// The dotnet host running the tests: <c>dotnet test</c> sets DOTNET_HOST_PATH; the test host itself
    /// usually runs under it too; else whatever <c>dotnet</c> is on PATH.
    /// </summary>
    public static string DotnetHost()
    {
        if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host))
        {
            return host;
        }

        if (Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet")
        {
            return self;
        }

        return "dotnet";
    }
}

/// <summary>What one run of the command returned and printed.</summary>
sealed record CliResult(int ExitCode, string StandardOutput, string StandardError, TimeSpan Elapsed)
{
    public string[] OutputLines => StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    public string[] ErrorLines => StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>For assertion messages: everything the run printed.</summary>
    public override string ToString() => $"exit {ExitCode} after {Elapsed.TotalSeconds:0.00} s\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";
}
