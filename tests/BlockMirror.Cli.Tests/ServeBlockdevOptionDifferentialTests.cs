using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Bad node options given to qemu-storage-daemon 7.2 and to <c>blockmirror serve</c>, over QMP
/// (blockdev-add) and on the command line (<c>--blockdev</c>): both refuse them with the same error class
/// and text. Both entry points go through the driver registry here, so this also checks that they agree.
/// </summary>
public sealed class ServeBlockdevOptionDifferentialTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-serve-options-");

    public void Dispose() => _dir.Dispose();

    /// <summary>blockdev-add arguments both daemons refuse before opening anything.</summary>
    static readonly string[] BadBlockdevAdds =
    [
        """{"driver": "null-co", "node-name": "n", "foo": 1}""",
        """{"driver": "null-co", "node-name": "n", "size": "big"}""",
        """{"driver": "null-co", "node-name": "n", "read-zeroes": "yes"}""",
        """{"driver": "bogus", "node-name": "n"}""",
        """{"node-name": "n"}""",
        """{"driver": "null-co"}""",
        """{"driver": "file", "node-name": "n"}""",
        """{"driver": "raw", "node-name": "n", "file": "nope"}""",
        """{"driver": "raw", "node-name": "n", "file": 42}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "bogus": 1}}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "file", "filename": "/tmp/x", "cache": {"direct": "yes"}}}""",
        """{"driver": "null-co", "node-name": "n", "discard": "sometimes"}""",
        """{"driver": "qcow2", "node-name": "n", "file": {"driver": "null-co"}, "l2-cache-size": "x"}""",
        """{"driver": "null-co", "node-name": "9bad"}""",
    ];

    /// <summary>--blockdev values both daemons refuse at start.</summary>
    public static TheoryData<string> BadCommandLines { get; } = new()
    {
        "driver=null-co,node-name=n,foo=1",
        "driver=null-co,node-name=n,size=big",
        "driver=null-co,node-name=n,read-zeroes=maybe",
        "driver=bogus,node-name=n",
        "driver=raw,node-name=n,file=nope",
        "driver=null-co",
        "driver=file,node-name=n",
    };

    [SkippableFact]
    public async Task Blockdev_add_refuses_bad_options_as_qemu_storage_daemon_does()
    {
        var theirs = await RefusalsAsync(DifferentialDaemon.Qsd());
        var ours = await RefusalsAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirs, ours);
        Assert.Contains("GenericError: Parameter 'foo' is unexpected", ours);
    }

    [SkippableTheory]
    [MemberData(nameof(BadCommandLines))]
    public Task Blockdev_on_the_command_line_is_refused_as_qemu_storage_daemon_refuses_it(string blockdev) =>
        AssertRefusedAlikeAsync(blockdev);

    /// <summary>Starts both daemons with this <c>--blockdev</c>: both must exit 1 with the same message.</summary>
    internal static async Task AssertRefusedAlikeAsync(string blockdev)
    {
        var qsd = DifferentialDaemon.Qsd();
        var theirs = await ExternalTool.RunAsync(qsd.Program, ["--blockdev", blockdev], TimeSpan.FromSeconds(30));
        var ours = await BlockMirrorCli.RunAsync("serve", "--blockdev", blockdev);

        Assert.Equal(1, theirs.ExitCode);
        Assert.Equal(1, ours.ExitCode);
        // qemu-storage-daemon names the option it refuses; the message after that is the same.
        var theirMessage = theirs.StandardError.Trim().Replace($"qemu-storage-daemon: --blockdev {blockdev}: ", "", StringComparison.Ordinal);
        var ourMessage = ours.ErrorLines[0].Replace("blockmirror serve: ", "", StringComparison.Ordinal);
        Assert.Equal(theirMessage, ourMessage);
    }

    async Task<List<string>> RefusalsAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, daemon.Name);
        Directory.CreateDirectory(dir);
        var refusals = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", "driver=null-co,node-name=disk"], "disk", async (qmp, _) =>
        {
            foreach (var arguments in BadBlockdevAdds)
            {
                var reply = await qmp.CommandAsync("blockdev-add", JsonNode.Parse(arguments)!.AsObject());
                var error = reply["error"] ?? throw new InvalidOperationException($"{daemon.Name} accepted {arguments}");
                refusals.Add($"{(string?)error["class"]}: {(string?)error["desc"]}");
            }
        });
        return refusals;
    }
}
