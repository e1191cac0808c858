using BlockMirror.Nbd.Client;
using BlockMirror.Nbd.Protocol;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// Requests past the end of an export, sent byte for byte the same to our server, to nbdkit and to
/// qemu-storage-daemon 7.2: our errnos are the NBD spec's (ENOSPC for WRITE and WRITE_ZEROES, EINVAL
/// otherwise), which nbdkit sends too. qemu-storage-daemon 7.2 decides ENOSPC for the writes but replies
/// EINVAL to every request it refuses before running it (nbd_trip sends -EINVAL whatever the check
/// returned), so it differs exactly there.
/// </summary>
public sealed class NbdPastTheEndDifferentialTests
{
    const long Size = 1 << 20;

    static readonly (NbdCommand Command, ulong Offset, uint Length)[] Requests =
    [
        (NbdCommand.Read, Size - 512, 1024),
        (NbdCommand.Read, Size + 1, 0),
        (NbdCommand.Write, Size, 512),
        (NbdCommand.Write, Size - 1, 2),
        (NbdCommand.WriteZeroes, 0, (uint)Size + 1),
        (NbdCommand.WriteZeroes, Size + 4096, 4096),
        (NbdCommand.Trim, Size + 4096, 4096),
        (NbdCommand.Cache, Size, 1),
        (NbdCommand.Read, 0, 512),
    ];

    static readonly NbdError[] Spec =
        [NbdError.EINVAL, NbdError.EINVAL, NbdError.ENOSPC, NbdError.ENOSPC, NbdError.ENOSPC, NbdError.ENOSPC, NbdError.EINVAL, NbdError.EINVAL, NbdError.None];

    [Fact]
    public async Task Ours_are_the_specs()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        Assert.Equal(Spec, await SendAllAsync(nbd.Port, NbdFixture.ExportName).WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [SkippableFact]
    public async Task Nbdkit_sends_the_same()
    {
        var nbdkit = ExternalTool.Require("nbdkit");
        var errors = await ErrnosFromDaemonAsync(nbdkit, port => ["-f", "-i", "127.0.0.1", "-p", $"{port}", "-e", "disk", "memory", $"{Size}"])
            .WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Spec, errors);
    }

    [SkippableFact]
    public async Task Qemu_storage_daemon_7_2_differs_only_in_sending_einval_for_the_writes()
    {
        var qsd = ExternalTool.Require("qemu-storage-daemon");
        using var dir = new TempDirectory("blockmirror-qsd-");
        var path = ExternalNbdDaemon.NewImage(dir, Size);

        var errors = await ErrnosFromDaemonAsync(qsd, port =>
        [
            "--blockdev", $"driver=file,node-name=disk,filename={path}",
            "--nbd-server", $"addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
            "--export", "type=nbd,id=exp0,node-name=disk,name=disk,writable=on",
        ]).WaitAsync(TimeSpan.FromSeconds(30));
        var expected = Spec.Select(e => e == NbdError.ENOSPC ? NbdError.EINVAL : e);
        Assert.Equal(expected, errors);
    }

    static Task<NbdError[]> ErrnosFromDaemonAsync(string tool, Func<int, string[]> arguments) =>
        ExternalNbdDaemon.RunAsync(tool, arguments, port => SendAllAsync(port, "disk"));

    /// <summary>The requests through our client's connection (which checks no range: the node above it would).</summary>
    static async Task<NbdError[]> SendAllAsync(int port, string export)
    {
        await using var client = await NbdClientDriver.ConnectAsync(
            new NbdClientOptions(new NbdServerAddress { Host = "127.0.0.1", Port = $"{port}" }, export), CancellationToken.None);
        var errors = new List<NbdError>();
        foreach (var (command, offset, length) in Requests)
        {
            var buffer = new byte[length];
            var reply = await client.RequestAsync(command, NbdCommandFlags.None, (long)offset, length,
                command == NbdCommand.Read ? buffer : default, command == NbdCommand.Write ? buffer : default, CancellationToken.None);
            errors.Add(reply.Error);
        }

        return [.. errors];
    }
}
