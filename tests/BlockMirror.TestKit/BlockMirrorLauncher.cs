using System.Diagnostics;

namespace BlockMirror.TestKit;

/// <summary>
/// How to start the <c>blockmirror</c> command from a path: a native executable (what <c>publish.sh</c>
/// makes, ahead-of-time compiled, as users install it) runs as it is; a <c>.dll</c> (a plain build's
/// output) runs through the dotnet host. Shared by the command-line tests and the benchmarks.
/// </summary>
public static class BlockMirrorLauncher
{
    /// <summary>The program and the leading arguments that start <c>blockmirror</c> at <paramref name="path"/>.</summary>
    public static IReadOnlyList<string> Launcher(string path) =>
        path.EndsWith(".dll", StringComparison.Ordinal) ? [DotnetHost(), path] : [path];

    /// <summary>A start description running <c>blockmirror</c> at <paramref name="path"/> with <paramref name="arguments"/>.</summary>
    public static ProcessStartInfo StartInfo(string path, IEnumerable<string> arguments)
    {
        var launcher = Launcher(path);
        var start = new ProcessStartInfo(launcher[0]) { UseShellExecute = false };
        foreach (var argument in launcher.Skip(1).Concat(arguments))
        {
            start.ArgumentList.Add(argument);
        }

        return start;
    }

    /// <summary>
    /// The dotnet host: <c>dotnet test</c> sets DOTNET_HOST_PATH; a process run by the host is its child;
    /// else whatever <c>dotnet</c> is on PATH.
    /// </summary>
    static string DotnetHost()
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
