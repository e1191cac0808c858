using System.Diagnostics;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// Image locks seen across processes, both ways: an overlay held writable by the real qemu-storage-daemon
/// or by <c>blockmirror serve</c> is refused to qemu-img and to blockmirror's image commands alike, in the
/// same words (qemu-img's), and the read-only ones get through with <c>-U</c>. Then: a second serve of an
/// image is refused, and <c>locking=off</c> takes no lock. blockdev-add of a held image is refused by both daemons alike.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ImageLockingTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-lock-test-");

    public void Dispose() => _dir.Dispose();

    const string SharedWrite = "Failed to get shared \"write\" lock";
    const string Write = "Failed to get \"write\" lock";

    /// <summary>Each command, what it wants, and whether it is read-only (then <c>-U</c> lets it through).</summary>
    static readonly (string Command, string Refusal, bool ReadOnly)[] Commands =
    [
        ("info", SharedWrite, true),
        ("map", SharedWrite, true),
        ("compare", SharedWrite, true),
        ("check", SharedWrite, true),
        ("check -r leaks", Write, false),
        ("resize", Write, false),
        ("commit", Write, false),
        ("mirror", SharedWrite, false),
        ("create -f qcow2", Write, false),
    ];

    public static TheoryData<string, string, string> Matrix()
    {
        var data = new TheoryData<string, string, string>();
        foreach (var holder in new[] { "qsd", "ours" })
        {
            foreach (var tool in new[] { "qemu-img", "blockmirror" })
            {
                foreach (var (command, _, _) in Commands)
                {
                    // qemu-img has no mirror.
                    if (tool == "blockmirror" || command != "mirror")
                    {
                        data.Add(holder, tool, command);
                    }
                }
            }
        }

        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(Matrix))]
    public async Task An_image_held_writable_is_refused_to_every_tool_in_qemu_imgs_words(string holder, string tool, string command)
    {
        var image = await CreateOverlayAsync();
        await using var held = await HoldAsync(holder == "qsd" ? DifferentialDaemon.Qsd() : DifferentialDaemon.Ours(), image);
        var (_, refusal, readOnly) = Commands.Single(c => c.Command == command);
        var before = BlockMirror.Block.Interop.FileStatus.Identify(image);

        // Named as the user names it, relative to the working directory: both tools repeat the name as given.
        var name = Path.GetFileName(image);
        var refused = await RunAsync(tool, command, image, forceShare: false, relative: true);

        var exitCode = command == "compare" ? 2 : 1;
        var prefix = tool == "qemu-img" ? "qemu-img" : $"blockmirror {command.Split(' ')[0]}";
        // A creation is refused before it touches the file; the others when they open it.
        var message = command.StartsWith("create", StringComparison.Ordinal) ? $"{name}: {refusal}" : $"Could not open '{name}': {refusal}";
        Assert.True(refused.ExitCode == exitCode, $"expected exit {exitCode}:\n{refused}");
        Assert.Equal([$"{prefix}: {message}", $"Is another process using the image [{name}]?"], refused.ErrorLines);
        Assert.Equal(before, BlockMirror.Block.Interop.FileStatus.Identify(image));

        if (readOnly)
        {
            var shared = await RunAsync(tool, command, image, forceShare: true);
            Assert.True(shared.ExitCode == 0, $"-U should let {command} through:\n{shared}");
        }
    }

    [SkippableFact]
    public async Task A_second_serve_of_an_image_is_refused_unless_it_takes_no_locks()
    {
        var image = await CreateOverlayAsync();
        await using var first = await HoldAsync(DifferentialDaemon.Ours(), image);

        var second = await BlockMirrorCli.RunAsync(["serve", .. HolderArguments(image, _dir.File("second.sock"), "")]);

        Assert.True(second.ExitCode != 0, $"the second serve should be refused:\n{second}");
        // Named by the option refused, as qemu-storage-daemon names it: the format node, which takes the write lock.
        Assert.Equal([$"blockmirror serve: --blockdev driver=qcow2,node-name=q,file=f: {Write}", $"Is another process using the image [{image}]?"], second.ErrorLines);

        // locking=off: it neither checks nor holds anything.
        await using var unlocked = await HoldAsync(DifferentialDaemon.Ours(), image, ",locking=off");
    }

    [SkippableFact]
    public async Task With_locking_off_serve_holds_no_lock()
    {
        var image = await CreateOverlayAsync();
        await using var held = await HoldAsync(DifferentialDaemon.Ours(), image, ",locking=off");

        var info = await RunAsync("qemu-img", "check -r leaks", image, forceShare: false);

        Assert.True(info.ExitCode == 0, $"nothing is locked:\n{info}");
    }

    [SkippableFact]
    public async Task Blockdev_add_of_an_image_held_elsewhere_is_refused_by_both_daemons_in_the_same_words()
    {
        var image = await CreateOverlayAsync();
        await using var held = await HoldAsync(DifferentialDaemon.Qsd(), image);
        List<List<string>> answers = [];
        foreach (var daemon in new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() })
        {
            var dir = _dir.File(daemon.Name);
            Directory.CreateDirectory(dir);
            await QemuImages.CreateAsync($"{dir}/other.raw", "1M");
            List<string> said = [];
            await daemon.RunAsync(dir, ["--blockdev", $"driver=file,node-name=other,filename={dir}/other.raw"], "other", async (qmp, _) =>
            {
                foreach (var (readOnly, locking) in new[] { (false, "auto"), (true, "auto"), (true, "off") })
                {
                    var reply = await qmp.CommandAsync("blockdev-add", new JsonObject
                    {
                        ["driver"] = "qcow2", ["node-name"] = "x", ["read-only"] = readOnly, ["backing"] = null,
                        ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = image, ["locking"] = locking },
                    });
                    said.Add(reply["error"] is { } error ? (string)error["desc"]! : "ok");
                    if (reply["error"] is null)
                    {
                        await qmp.ExecuteAsync("blockdev-del", new JsonObject { ["node-name"] = "x" });
                    }
                }
            });
            answers.Add(said);
        }

        Assert.Equal([Write, SharedWrite, "ok"], answers[0]);
        Assert.Equal(answers[0], answers[1]);
    }

    async Task<string> CreateOverlayAsync()
    {
        var @base = _dir.File("base.qcow2");
        var top = _dir.File("top.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", @base, "1M");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", "-b", @base, "-F", "qcow2", top);
        return top;
    }

    /// <param name="relative">Runs in the image's directory and names the image by its file name alone.</param>
    async Task<CliResult> RunAsync(string tool, string command, string image, bool forceShare, bool relative = false)
    {
        var directory = relative ? Path.GetDirectoryName(image) : null;
        image = relative ? Path.GetFileName(image) : image;
        List<string> arguments = [.. command.Split(' ')];
        if (forceShare)
        {
            arguments.Add("-U");
        }

        arguments.AddRange(command switch
        {
            "compare" => [image, image],
            "resize" => [image, "+1M"],
            "mirror" => [image, _dir.File("copy.qcow2")],
            "create -f qcow2" => [image, "1M"],
            _ => [image],
        });

        if (tool == "blockmirror")
        {
            return await BlockMirrorCli.RunAsync(arguments, directory);
        }

        var result = await ExternalTool.RunAsync("qemu-img", arguments, workingDirectory: directory);
        return new CliResult(result.ExitCode, result.StandardOutput, result.StandardError, TimeSpan.Zero);
    }

    static string[] HolderArguments(string image, string socket, string fileOptions) =>
    [
        "--blockdev", $"driver=file,node-name=f,filename={image}{fileOptions}",
        "--blockdev", "driver=qcow2,node-name=q,file=f",
        "--chardev", $"socket,id=m,path={socket},server=on,wait=off",
        "--monitor", "chardev=m",
    ];

    /// <summary>Starts a daemon holding <paramref name="image"/> writable; ready once its monitor answers.</summary>
    async Task<Holder> HoldAsync(DifferentialDaemon daemon, string image, string fileOptions = "")
    {
        var socket = _dir.File($"{daemon.Name}-{Guid.NewGuid():N}.sock");
        var start = new ProcessStartInfo(daemon.Program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in (string[])[.. daemon.Prefix, .. HolderArguments(image, socket, fileOptions)])
        {
            start.ArgumentList.Add(argument);
        }

        var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            await using var qmp = await QmpClient.ConnectAsync(socket, TimeSpan.FromSeconds(15));
        }
        catch (Exception e)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            throw new InvalidOperationException($"{daemon.Name} did not start: {await stderr}", e);
        }

        return new Holder(process);
    }

    sealed class Holder(Process process) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }

            await process.WaitForExitAsync();
            process.Dispose();
        }
    }
}
