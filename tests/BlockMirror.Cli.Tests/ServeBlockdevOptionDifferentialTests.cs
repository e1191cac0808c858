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
        // detect-zeroes: unmap needs the node's own discard=unmap (an inline child has it unless it says
        // otherwise); refused after the root's missing name and before a bad one.
        """{"driver": "null-co", "node-name": "n", "detect-zeroes": "unmap"}""",
        """{"driver": "null-co", "node-name": "n", "detect-zeroes": "unmap", "discard": "ignore"}""",
        """{"driver": "null-co", "node-name": "n", "detect-zeroes": "sometimes"}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co"}, "detect-zeroes": "unmap"}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "discard": "ignore", "detect-zeroes": "unmap"}}""",
        """{"driver": "null-co", "detect-zeroes": "unmap"}""",
        """{"driver": "null-co", "node-name": "9bad", "detect-zeroes": "unmap"}""",
        // A raw window outside its file, or of a size that is not whole sectors.
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "size": 4096}, "offset": 8192}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "size": 4096}, "offset": 512, "size": 4096}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "size": 4096}, "size": 1000}""",
        // An int to QAPI, a size to the raw driver: refused by the driver's reading, in its words.
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "size": 4096}, "offset": -1}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "size": 4096}, "size": -512}""",
        // A name the graph has (the daemon's own node), at the root or on an inline child.
        """{"driver": "null-co", "node-name": "disk"}""",
        """{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "node-name": "disk"}}""",
    ];

    /// <summary>--blockdev values both daemons refuse at start.</summary>
    public static TheoryData<string> BadCommandLines { get; } = new()
    {
        "driver=null-co,node-name=n,foo=1",
        "driver=null-co,node-name=n,size=big",
        // An int takes no size suffix on the command line (QEMU's keyval reads ints as strtoll does).
        "driver=null-co,node-name=n,size=1M",
        "driver=null-co,node-name=n,size=0x10G",
        "driver=null-co,node-name=n,size=08",
        "driver=null-co,node-name=n,read-zeroes=maybe",
        "driver=bogus,node-name=n",
        "driver=raw,node-name=n,file=nope",
        "driver=null-co",
        "driver=file,node-name=n",
        "driver=null-co,node-name=n,detect-zeroes=unmap",
        "driver=raw,node-name=n,file.driver=null-co,file.discard=ignore,file.detect-zeroes=unmap",
        // The driver as the first, implied key.
        "null-co,node-name=n,foo=1",
        "bogus,node-name=n",
        "file,node-name=n",
        // JSON read as QEMU's parser reads it: cut short, a duplicate key, a bad keyword, two values.
        """{"driver":""",
        """{"driver": "null-co", "node-name": "a", "node-name": "b"}""",
        "{'driver': nul}",
        """{"driver": "null-co", "node-name": "a"} x""",
        """{"driver": "null-co", "node-name": "a"} {}""",
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

    [SkippableFact]
    public Task A_node_name_given_twice_on_the_command_line_is_refused_as_qemu_storage_daemon_refuses_it() =>
        AssertOptionsRefusedAlikeAsync("--blockdev", "driver=null-co,node-name=n", "--blockdev", "driver=null-co,node-name=n");

    /// <summary>Starts both daemons with this <c>--blockdev</c>: both must exit 1 with the same message.</summary>
    internal static Task AssertRefusedAlikeAsync(string blockdev) => AssertOptionsRefusedAlikeAsync("--blockdev", blockdev);

    /// <summary>Starts both daemons with these options: both must exit 1 with the same message.</summary>
    internal static async Task AssertOptionsRefusedAlikeAsync(params string[] options)
    {
        var qsd = DifferentialDaemon.Qsd();
        var theirs = await ExternalTool.RunAsync(qsd.Program, options, TimeSpan.FromSeconds(30));
        var ours = await BlockMirrorCli.RunAsync(["serve", .. options]);

        Assert.Equal(1, theirs.ExitCode);
        Assert.Equal(1, ours.ExitCode);
        // Both name the option they refuse, then say the same.
        var theirMessage = theirs.StandardError.Trim().Replace("qemu-storage-daemon: ", "", StringComparison.Ordinal);
        var ourMessage = ours.ErrorLines[0].Replace("blockmirror serve: ", "", StringComparison.Ordinal);
        Assert.Equal(theirMessage, ourMessage);
    }

    /// <summary>An int on the command line as C's strtoll reads it in base 0: hex, octal, a sign, leading blanks.</summary>
    [SkippableFact]
    public async Task Ints_on_the_command_line_are_read_as_qemu_storage_daemon_reads_them()
    {
        var seen = new List<string>[2];
        var daemons = new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() };
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Path.Combine(_dir.Path, $"ints-{daemons[i].Name}");
            Directory.CreateDirectory(dir);
            var sizes = new List<string>();
            string[] blockdevs =
            [
                "--blockdev", "driver=null-co,node-name=hex,size=0x100000",
                "--blockdev", "driver=null-co,node-name=octal,size=04000000",
                "--blockdev", "driver=null-co,node-name=signed,size=+2097152",
                "--blockdev", "driver=null-co,node-name=blank,size= 3145728",
            ];
            await daemons[i].RunAsync(dir, blockdevs, "hex", async (qmp, _) =>
            {
                var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
                sizes.AddRange(nodes.Select(n => $"{(string?)n!["node-name"]} {(long?)n["image"]!["virtual-size"]}").Order(StringComparer.Ordinal));
            });
            seen[i] = sizes;
        }

        Assert.Equal(["blank 3145728", "hex 1048576", "octal 1048576", "signed 2097152"], seen[0]);
        Assert.Equal(seen[0], seen[1]);
    }

    [SkippableFact]
    public async Task The_first_key_may_be_left_out_where_qemu_storage_daemon_allows_it()
    {
        var theirs = await ImpliedKeyNodesAsync(DifferentialDaemon.Qsd());
        var ours = await ImpliedKeyNodesAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirs, ours);
        Assert.Equal(["disk raw", "f file", "n null-co", "export exp0 disk"], ours);
    }

    /// <summary>
    /// <c>--blockdev DRIVER,...</c>, <c>--export nbd,...</c> and <c>--monitor NAME</c> (the first key implied):
    /// the nodes (name and driver) and the export the daemon then has.
    /// </summary>
    async Task<List<string>> ImpliedKeyNodesAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, $"implied-{daemon.Name}");
        Directory.CreateDirectory(dir);
        await File.WriteAllBytesAsync(Path.Combine(dir, "disk.raw"), new byte[1 << 20]);
        var seen = new List<string>();
        string[] blockdevs =
        [
            "--blockdev", $"file,filename={dir}/disk.raw,node-name=f",
            "--blockdev", "raw,node-name=disk,file=f",
            "--blockdev", "null-co,node-name=n,size=1048576",
        ];
        await daemon.RunAsync(dir, blockdevs, "disk", async (qmp, _) =>
        {
            var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
            seen.AddRange(nodes.Select(n => $"{(string?)n!["node-name"]} {(string?)n["drv"]}").Order(StringComparer.Ordinal));
            var exports = (await qmp.ExecuteAsync("query-block-exports"))!.AsArray();
            seen.AddRange(exports.Select(e => $"export {(string?)e!["id"]} {(string?)e["node-name"]}"));
        }, impliedKeys: true);
        return seen;
    }

    [SkippableFact]
    public async Task Aio_modes_are_accepted_and_refused_as_qemu_storage_daemon_does()
    {
        var theirs = await AioModesAsync(DifferentialDaemon.Qsd());
        var ours = await AioModesAsync(DifferentialDaemon.Ours());

        Assert.Equal(theirs, ours);
        Assert.Contains("io_uring buffered: ok", ours);
        Assert.Contains("native buffered: GenericError: aio=native was specified, but it requires cache.direct=on, which was not specified.", ours);
        Assert.Contains("native direct: ok", ours);
        Assert.Contains("io-uring-direct file aio reported=False direct=True", ours);

        // And on the command line (QEMU checks after opening the file, so it must exist).
        var path = _dir.File("native.raw");
        await File.WriteAllBytesAsync(path, new byte[1 << 20]);
        await AssertRefusedAlikeAsync($"driver=file,node-name=n,filename={path},aio=native");
    }

    /// <summary>
    /// blockdev-add of a file node with each aio value, buffered and with cache.direct: the reply, then what
    /// query-named-block-nodes says of each node that opened (neither daemon reports aio there) and its cache.direct
    /// (<see cref="CacheDirectDifferentialTests"/> compares it for inline children too).
    /// </summary>
    async Task<List<string>> AioModesAsync(DifferentialDaemon daemon)
    {
        var dir = Path.Combine(_dir.Path, $"aio-{daemon.Name}");
        Directory.CreateDirectory(dir);
        await File.WriteAllBytesAsync(Path.Combine(dir, "disk.raw"), new byte[1 << 20]);
        var seen = new List<string>();
        await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=disk,filename={dir}/disk.raw"], "disk", async (qmp, _) =>
        {
            foreach (var aio in new[] { "threads", "io_uring", "native" })
            {
                foreach (var direct in new[] { false, true })
                {
                    var name = $"{aio.Replace('_', '-')}-{(direct ? "direct" : "buffered")}";
                    var path = Path.Combine(dir, $"{name}.raw");
                    await File.WriteAllBytesAsync(path, new byte[1 << 20]);
                    var arguments = new JsonObject
                    {
                        ["driver"] = "file", ["node-name"] = name, ["filename"] = path, ["aio"] = aio,
                        ["cache"] = new JsonObject { ["direct"] = direct },
                    };
                    var reply = await qmp.CommandAsync("blockdev-add", arguments);
                    var error = reply["error"];
                    seen.Add($"{aio} {(direct ? "direct" : "buffered")}: {(error is null ? "ok" : $"{(string?)error["class"]}: {(string?)error["desc"]}")}");
                }
            }

            var nodes = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray();
            seen.AddRange(nodes
                .Select(n => $"{(string?)n!["node-name"]} {(string?)n["drv"]} aio reported={n.ToJsonString().Contains("\"aio\"", StringComparison.Ordinal)} direct={(bool)n["cache"]!["direct"]!}")
                .Order(StringComparer.Ordinal));
        });
        return seen;
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
