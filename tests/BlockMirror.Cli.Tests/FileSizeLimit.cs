using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A command run with a limit on the size of the files it makes (RLIMIT_FSIZE, through prlimit) and SIGXFSZ
/// ignored, so that a write or a resize past the limit fails with EFBIG instead of killing the process: how the
/// tests make a file system refuse a size, on any file system.
/// </summary>
static class FileSizeLimit
{
    /// <summary>The shell that applies the limit; run it with <see cref="Arguments"/>.</summary>
    public const string Shell = "/bin/sh";

    /// <summary>
    /// <see cref="Shell"/>'s arguments to run <paramref name="command"/> (program and arguments) under the limit.
    /// Skips the test (fails it in CI) when prlimit is not installed.
    /// </summary>
    /// <remarks>
    /// The .NET runtime's W^X double mapping sizes a memory file, which the limit would refuse (the JIT build
    /// only): it is turned off for whatever runs under the limit.
    /// </remarks>
    public static string[] Arguments(long limit, params IEnumerable<string> command) =>
    [
        "-c", $"export DOTNET_EnableWriteXorExecute=0; trap '' XFSZ; exec {ExternalTool.Require("prlimit")} --fsize={limit} -- \"$@\"", "sh",
        .. command,
    ];
}
