using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// The Debian package <c>./publish.sh --deb</c> builds, on this machine: <c>dpkg -i</c>, then the installed
/// blockmirror.service's ExecStart run as systemd would run it (its EnvironmentFile read, its RuntimeDirectory
/// made, NOTIFY_SOCKET set) but without systemctl, a QMP client greeted on the unit's socket, and
/// <c>dpkg --purge</c>, which must leave nothing of it. test.sh's native pass names the package in
/// BLOCKMIRROR_DEB (CI runs as root); elsewhere the test is skipped.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed partial class DebianPackageTests : IDisposable
{
    const string Unit = "/lib/systemd/system/blockmirror.service";
    const string RuntimeDirectory = "/run/blockmirror";

    readonly TempDirectory _dir = new("blockmirror-deb-");

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task The_package_installs_its_unit_serves_and_purges_cleanly()
    {
        var deb = Environment.GetEnvironmentVariable("BLOCKMIRROR_DEB");
        Skip.If(string.IsNullOrEmpty(deb), "BLOCKMIRROR_DEB is not set (test.sh sets it to the package publish.sh --deb built)");
        Assert.True(Environment.UserName == "root", "installing a package needs root (CI runs test.sh as root)");
        // Never touch an installation that is not the test's own.
        var status = await RunAsync("dpkg-query", "-W", "-f=${Status}", "blockmirror");
        Assert.True(status.ExitCode != 0 || status.Output.Contains("not-installed", StringComparison.Ordinal), $"a blockmirror package is already here: {status.Output}");
        Assert.False(File.Exists("/usr/bin/blockmirror"), "/usr/bin/blockmirror exists and is not the test's");
        Assert.False(Directory.Exists(RuntimeDirectory), $"{RuntimeDirectory} exists: is a blockmirror daemon running here?");

        var install = await RunAsync("dpkg", "-i", deb!);
        try
        {
            Assert.True(install.ExitCode == 0, install.Output);
            Assert.True(File.Exists("/usr/share/man/man1/blockmirror-serve.1.gz"));
            Assert.True(File.Exists("/usr/share/bash-completion/completions/blockmirror"));

            var argv = ExecStart(await File.ReadAllTextAsync(Unit), ReadEnvironmentFile("/etc/default/blockmirror"));
            Assert.Equal("/usr/bin/blockmirror", argv[0]);
            Directory.CreateDirectory(RuntimeDirectory);
            using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            notify.Bind(new UnixDomainSocketEndPoint(_dir.File("notify.sock")));
            var start = new ProcessStartInfo(argv[0]) { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var argument in argv.Skip(1))
            {
                start.ArgumentList.Add(argument);
            }

            start.Environment["NOTIFY_SOCKET"] = _dir.File("notify.sock");
            using var daemon = Process.Start(start)!;
            var stderr = daemon.StandardError.ReadToEndAsync();
            try
            {
                // Type=notify: systemd would call the unit started here.
                var buffer = new byte[256];
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                var n = await notify.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
                Assert.Equal("READY=1", Encoding.UTF8.GetString(buffer, 0, n));

                await using var qmp = await QmpClient.ConnectAsync($"{RuntimeDirectory}/qmp.sock", TimeSpan.Zero);
                Assert.Equal("BlockMirror", (string?)qmp.Greeting["QMP"]!["version"]!["package"]);
                await qmp.ExecuteAsync("quit");
                await daemon.WaitForExitAsync();
                Assert.True(daemon.ExitCode == 0, await stderr);
            }
            finally
            {
                await ServeSystemdTests.EndAsync(daemon);
            }
        }
        finally
        {
            var purge = await RunAsync("dpkg", "--purge", "blockmirror");
            if (Directory.Exists(RuntimeDirectory))
            {
                Directory.Delete(RuntimeDirectory, recursive: true);
            }

            Assert.True(purge.ExitCode == 0, purge.Output);
        }

        Assert.False(File.Exists("/usr/bin/blockmirror"));
        Assert.False(File.Exists(Unit));
        Assert.False(File.Exists("/etc/default/blockmirror"));
    }

    /// <summary>
    /// The unit's ExecStart as systemd splits it: words on spaces, <c>$VAR</c> replaced by the variable's value
    /// split into words (none when empty), <c>${VAR}</c> by its value as one word. The packaged units use no quoting.
    /// </summary>
    static List<string> ExecStart(string unit, Dictionary<string, string> environment)
    {
        var line = unit.Split('\n').Single(l => l.StartsWith("ExecStart=", StringComparison.Ordinal))["ExecStart=".Length..];
        var argv = new List<string>();
        foreach (var word in line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (Variable().Match(word) is { Success: true } variable)
            {
                var value = environment.GetValueOrDefault(variable.Groups[2].Value, "");
                if (variable.Groups[1].Value == "{")
                {
                    argv.Add(value);
                }
                else
                {
                    argv.AddRange(value.Split(' ', StringSplitOptions.RemoveEmptyEntries));
                }
            }
            else
            {
                argv.Add(word);
            }
        }

        return argv;
    }

    [GeneratedRegex(@"^\$(\{?)([A-Za-z_][A-Za-z0-9_]*)\}?$")]
    private static partial Regex Variable();

    /// <summary>An EnvironmentFile: NAME=VALUE lines, the value in double quotes or bare; comments skipped.</summary>
    static Dictionary<string, string> ReadEnvironmentFile(string path) =>
        File.ReadAllLines(path).Where(l => l.Length > 0 && l[0] != '#' && l.Contains('='))
            .ToDictionary(l => l[..l.IndexOf('=')], l => l[(l.IndexOf('=') + 1)..].Trim('"'));

    static async Task<(int ExitCode, string Output)> RunAsync(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment["DEBIAN_FRONTEND"] = "noninteractive";
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, await output + await error);
    }
}
