using System.Diagnostics;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Starts the real <c>blockmirror</c> command as its own process and captures what a user would see.
/// Output is redirected, so the command takes its non-terminal paths (plain progress lines).
/// </summary>
/// <remarks>
/// By default the command is <c>dotnet blockmirror.dll</c>, the dll copied next to the tests by the project
/// reference. With <c>BLOCKMIRROR_EXE</c> set it is that executable instead: <c>test.sh</c> runs these tests a
/// second time against the native (ahead-of-time compiled) build that <c>publish.sh</c> makes, the one users
/// install, so a difference between the two builds shows as a failure.
/// </remarks>
static class BlockMirrorCli
{
    static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The command's dll, next to the test assembly.</summary>
    static string DllPath { get; } = Path.Combine(AppContext.BaseDirectory, "blockmirror.dll");

    /// <summary>The native executable under test, if <c>BLOCKMIRROR_EXE</c> names one.</summary>
    static string? NativePath { get; } = Environment.GetEnvironmentVariable("BLOCKMIRROR_EXE") is { Length: > 0 } path ? Path.GetFullPath(path) : null;

    /// <summary>The <c>blockmirror</c> under test: BLOCKMIRROR_EXE, else the dll next to the tests.</summary>
    static string CommandPath
    {
        get
        {
            if (NativePath is { } native)
            {
                return File.Exists(native) ? native : throw new InvalidOperationException($"BLOCKMIRROR_EXE names {native}, which does not exist");
            }

            if (!File.Exists(DllPath) || !File.Exists(Path.ChangeExtension(DllPath, ".runtimeconfig.json")))
            {
                throw new InvalidOperationException($"{DllPath} (or its runtimeconfig.json) is missing: the project reference to BlockMirror.Cli should copy it");
            }

            return DllPath;
        }
    }

    /// <summary>The program and the leading arguments that start <c>blockmirror</c>.</summary>
    public static IReadOnlyList<string> Launcher => BlockMirrorLauncher.Launcher(CommandPath);

    /// <summary>A start description for <c>blockmirror</c> with <paramref name="arguments"/>, standard output and error redirected.</summary>
    public static ProcessStartInfo StartInfo(IEnumerable<string> arguments)
    {
        var start = BlockMirrorLauncher.StartInfo(CommandPath, arguments);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        return start;
    }

    /// <summary>Runs <c>blockmirror</c> with the arguments and waits for it to exit; kills it and throws on timeout.</summary>
    /// <param name="environment">Variables set for this run only.</param>
    public static async Task<CliResult> RunAsync(IEnumerable<string> arguments, string? workingDirectory = null, TimeSpan? timeout = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = StartInfo(arguments);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }

        start.RedirectStandardInput = true;
        start.WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory;
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {start.FileName}");
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
            throw new TimeoutException($"blockmirror {string.Join(' ', arguments)} did not exit within {timeout ?? DefaultTimeout}:\n" +
                $"stdout:\n{await stdout}\nstderr:\n{await stderr}");
        }

        return new CliResult(process.ExitCode, await stdout, await stderr, clock.Elapsed);
    }

    public static Task<CliResult> RunAsync(params string[] arguments) => RunAsync((IEnumerable<string>)arguments);
}

/// <summary>What one run of the command returned and printed.</summary>
sealed record CliResult(int ExitCode, string StandardOutput, string StandardError, TimeSpan Elapsed)
{
    public string[] OutputLines => StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    public string[] ErrorLines => StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>For assertion messages: everything the run printed.</summary>
    public override string ToString() => $"exit {ExitCode} after {Elapsed.TotalSeconds:0.00} s\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";
}
