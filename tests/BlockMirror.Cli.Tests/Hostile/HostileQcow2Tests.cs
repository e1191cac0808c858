using System.Text.RegularExpressions;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Hostile;

/// <summary>
/// Every image of <see cref="HostileQcow2Corpus"/> through every command that opens an image, on BlockMirror
/// and on QEMU 7.2 (qemu-img, qemu-storage-daemon) side by side, each in its own copy of the files: no stack
/// trace and no "internal error", no hang, QEMU's verdict (and for check and compare its exit code), QEMU's
/// reason where QEMU refuses to open the image, and the image unchanged by read-only commands and by
/// refused opens.
/// </summary>
public sealed partial class HostileQcow2Tests : IDisposable
{
    const string Image = "image.qcow2";
    const string Overlay = "top.qcow2";

    readonly TempDirectory _dir = new("blockmirror-hostile-corpus-");

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Damages => [.. HostileQcow2Corpus.All.Select(d => d.Name)];

    /// <summary>One command, as BlockMirror's arguments and QEMU's program and arguments; read-only or not.</summary>
    sealed record Command(string Name, string[] Ours, string Qemu, string[] QemuArguments, bool ReadOnly, bool Daemon = false);

    static readonly string Blockdev = $"driver=qcow2,node-name=disk,read-only=on,file.driver=file,file.filename={Image}";

    static readonly Command[] Commands =
    [
        new("info", ["info", Image], "qemu-img", ["info", Image], ReadOnly: true),
        new("map", ["map", Image], "qemu-img", ["map", Image], ReadOnly: true),
        new("check", ["check", Image], "qemu-img", ["check", Image], ReadOnly: true),
        new("compare", ["compare", Image, Image], "qemu-img", ["compare", Image, Image], ReadOnly: true),
        new("mirror", ["mirror", Image, "copy.raw"], "qemu-img", ["convert", "-O", "raw", Image, "copy.raw"], ReadOnly: true),
        new("serve", ["--blockdev", Blockdev], "qemu-storage-daemon", ["--blockdev", Blockdev], ReadOnly: true, Daemon: true),
        new("resize", ["resize", Image, "+1M"], "qemu-img", ["resize", Image, "+1M"], ReadOnly: false),
        new("commit", ["commit", Overlay], "qemu-img", ["commit", Overlay], ReadOnly: false),
    ];

    [Theory]
    [MemberData(nameof(Damages))]
    public async Task A_hostile_image_gets_qemus_verdict_from_every_command(string name)
    {
        ExternalTool.Require("qemu-img");
        ExternalTool.Require("qemu-io");
        ExternalTool.Require("qemu-storage-daemon");
        var damage = HostileQcow2Corpus.All.Single(d => d.Name == name);
        var (valid, layout) = await HostileQcow2Corpus.ValidAsync(_dir.Path);

        var problems = await Task.WhenAll(Commands.Select(c => RunAsync(c, damage, valid, layout)));

        var all = problems.SelectMany(p => p).ToList();
        Assert.True(all.Count == 0, $"'{name}':\n{string.Join("\n", all)}");
    }

    /// <summary>Runs one command on both sides, each in a fresh directory with the same file names; returns what disagrees.</summary>
    async Task<List<string>> RunAsync(Command command, HostileQcow2Corpus.Damage damage, byte[] valid, HostileQcow2Corpus.Layout layout)
    {
        var problems = new List<string>();
        var ours = await PrepareAsync($"{command.Name}-ours", damage, valid, layout);
        var before = QemuImages.Fingerprint(Path.Combine(ours, Image));
        var (exit, stdout, stderr) = await RunOursAsync(command, ours);
        var said = $"blockmirror {string.Join(' ', command.Ours)} exited {exit}:\n{stdout}{stderr}";

        if (Regex.IsMatch(stdout + stderr, @"internal error:|Unhandled exception|\n\s+at [A-Z]\w+\."))
        {
            problems.Add($"{command.Name}: a crash, not an error message: {said}");
        }

        var refusedOpen = exit != 0 && stderr.Contains("Could not open", StringComparison.Ordinal);
        if ((command.ReadOnly || refusedOpen || damage.DiffersIn(command.Name)) && QemuImages.Fingerprint(Path.Combine(ours, Image)) != before)
        {
            problems.Add($"{command.Name}: the image changed: {said}");
        }

        if (damage.DiffersIn(command.Name) && damage.OurRefusal is { } refusal)
        {
            // A deliberate difference: refused by every command, in our words.
            if (exit == 0 || !stderr.Contains(refusal, StringComparison.Ordinal))
            {
                problems.Add($"{command.Name}: expected our refusal '{refusal}': {said}");
            }

            return problems;
        }

        var qemu = await PrepareAsync($"{command.Name}-qemu", damage, valid, layout);
        var (qemuExit, qemuErr) = command.Daemon
            ? await DaemonStartup.RunAsync(ExternalTool.Require(command.Qemu), command.QemuArguments, qemu) is var o ? (o.ExitCode, o.StandardError) : default
            : await ExternalTool.RunAsync(command.Qemu, command.QemuArguments, TimeSpan.FromSeconds(60), qemu) is var r ? (r.ExitCode, r.StandardError) : default;
        var qemuSaid = $"{command.Qemu} {string.Join(' ', command.QemuArguments)} exited {qemuExit}:\n{qemuErr}";

        // check and compare tell by their exit code; the others by success or failure.
        var exact = command.Name is "check" or "compare";
        if (exact ? exit != qemuExit : (exit == 0) != (qemuExit == 0))
        {
            problems.Add($"{command.Name}: verdicts differ:\n  {qemuSaid}\n  {said}");
        }
        else if (OpenRefusal(qemuErr) is { } reason && !stderr.Contains(reason, StringComparison.Ordinal))
        {
            problems.Add($"{command.Name}: QEMU's reason '{reason}' missing:\n  {qemuSaid}\n  {said}");
        }

        return problems;
    }

    async Task<(int Exit, string Stdout, string Stderr)> RunOursAsync(Command command, string directory)
    {
        if (command.Daemon)
        {
            var launcher = DifferentialDaemon.Ours();
            var outcome = await DaemonStartup.RunAsync(launcher.Program, [.. launcher.Prefix, .. command.Ours], directory);
            return (outcome.ExitCode, "", outcome.StandardError);
        }

        var result = await BlockMirrorCli.RunAsync(command.Ours, directory, TimeSpan.FromSeconds(60));
        return (result.ExitCode, result.StandardOutput, result.StandardError);
    }

    /// <summary>A directory holding the damaged image, and an overlay over it for commit (written without opening it).</summary>
    async Task<string> PrepareAsync(string name, HostileQcow2Corpus.Damage damage, byte[] valid, HostileQcow2Corpus.Layout layout)
    {
        var directory = Directory.CreateDirectory(Path.Combine(_dir.Path, name)).FullName;
        HostileQcow2Corpus.Write(Path.Combine(directory, Image), valid, layout, damage);
        if (name.StartsWith("commit", StringComparison.Ordinal))
        {
            // -u: the overlay is written without opening its (damaged) backing file, which it names relatively.
            var created = await ExternalTool.RunAsync("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", Image, "-F", "qcow2", Overlay, "4M"],
                workingDirectory: directory);
            Assert.True(created.ExitCode == 0, created.StandardError);
        }

        return directory;
    }

    /// <summary>
    /// QEMU's reason when it refused to open an image: its first error line without the program's name, the
    /// option it came from, and the "Could not open 'FILE': " and "Could not open backing file: " layers that
    /// name the file (BlockMirror names files in its own words there). Null when QEMU did not refuse an open.
    /// </summary>
    static string? OpenRefusal(string stderr)
    {
        var line = stderr.Split('\n').FirstOrDefault(l => l.StartsWith("qemu-img: ", StringComparison.Ordinal) || l.StartsWith("qemu-storage-daemon: ", StringComparison.Ordinal));
        if (line is null)
        {
            return null;
        }

        var text = ProgramPrefix().Replace(line, "");
        var daemon = line.StartsWith("qemu-storage-daemon", StringComparison.Ordinal);
        if (!daemon && !text.StartsWith("Could not open", StringComparison.Ordinal))
        {
            return null;
        }

        return OpenLayers().Replace(text, "");
    }

    [GeneratedRegex(@"^(qemu-img|qemu-storage-daemon): (--blockdev \S+: )?")]
    private static partial Regex ProgramPrefix();

    [GeneratedRegex(@"^((Could not open '[^']*': )|(Could not open backing file: ))+")]
    private static partial Regex OpenLayers();
}
