using System.Net.Sockets;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// QEMU's passed-socket forms, <c>--chardev socket,fd=N</c> and <c>--nbd-server addr.type=fd,addr.str=N</c>,
/// refused as qemu-storage-daemon 7.2 refuses them: a number that does not parse, a descriptor that is not an
/// open socket, one that cannot listen. The working forms are in <see cref="ServeSystemdTests"/>.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServeFdDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-fd-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string[]> BadDescriptors => new()
    {
        { ["--nbd-server", "addr.type=fd,addr.str=99"] },
        { ["--nbd-server", "addr.type=fd,addr.str=-1"] },
        { ["--nbd-server", "addr.type=fd,addr.str=abc"] },
        { ["--nbd-server", "addr.type=fd,addr.str=3x"] },
        { ["--nbd-server", "addr.type=fd"] },
        { ["--chardev", "socket,id=c,fd=99,server=on,wait=off", "--monitor", "c"] },
        { ["--chardev", "socket,id=c,fd=abc,server=on,wait=off", "--monitor", "c"] },
        { ["--chardev", "socket,id=c,fd=3,path=/nonexistent/x.sock,server=on,wait=off", "--monitor", "c"] },
    };

    [SkippableTheory]
    [MemberData(nameof(BadDescriptors))]
    public Task A_bad_descriptor_is_refused_as_qemu_storage_daemon_refuses_it(string[] options) =>
        ServeBlockdevOptionDifferentialTests.AssertOptionsRefusedAlikeAsync(options);

    [SkippableTheory]
    [InlineData("--nbd-server", "addr.type=fd,addr.str=3")]
    [InlineData("--chardev", "socket,id=c,fd=3,server=on,wait=off")]
    public async Task A_datagram_socket_cannot_listen_in_both(string option, string value)
    {
        var theirs = await RunWithDatagramSocketAsync([DifferentialDaemon.Qsd().Program, option, value], "qemu-storage-daemon: ");
        var ours = await RunWithDatagramSocketAsync([.. BlockMirrorCli.Launcher, "serve", option, value], "blockmirror serve: ");

        Assert.Equal(theirs, ours);
        Assert.Equal($"{option} {value}: Failed to listen on fd socket: Operation not supported", ours);
    }

    /// <summary>
    /// Runs the daemon under systemd-socket-activate with a datagram socket as fd 3 (it starts the daemon when the
    /// first datagram arrives) and returns its error line, without the program's prefix.
    /// </summary>
    async Task<string> RunWithDatagramSocketAsync(string[] command, string prefix)
    {
        var path = _dir.File($"dgram-{Guid.NewGuid():N}.sock");
        var run = ExternalTool.RunAsync("systemd-socket-activate", ["--datagram", "-l", path, .. command], TimeSpan.FromSeconds(30));
        using var sender = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        while (!File.Exists(path) && !run.IsCompleted)
        {
            await Task.Delay(10);
        }

        if (!run.IsCompleted)
        {
            await sender.SendToAsync(new byte[] { 1 }, new System.Net.Sockets.UnixDomainSocketEndPoint(path));
        }

        var result = await run;
        Assert.True(result.ExitCode == 1, $"{string.Join(' ', command)}: exit {result.ExitCode}\n{result.StandardError}");
        var line = result.StandardError.Split('\n').Single(l => l.StartsWith(prefix, StringComparison.Ordinal));
        return line[prefix.Length..];
    }
}
