using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// One ported iotest scenario, run unchanged on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>, each on
/// its own copy of the images (made by qemu-img and qemu-io in <c>ROOT/qsd</c> and <c>ROOT/ours</c>): the same
/// options, the same QMP script. What a script records in <see cref="IotestSession.Log"/> (replies, errors,
/// query results, with the directory written as DIR) and the events (<see cref="DifferentialDaemon.Describe"/>)
/// must be the same on both; the caller then compares the images the two left behind.
/// </summary>
static class IotestRun
{
    /// <summary>What one daemon did: its events, its log and its directory.</summary>
    public sealed record Outcome(List<string> Events, List<string> Log, string Dir);

    /// <summary>
    /// Makes the images with <paramref name="prepare"/> (given the directory), starts each daemon with
    /// <paramref name="blockdevs"/> (given the directory) and runs <paramref name="script"/>; fails unless both
    /// give the same events and log. Returns qemu-storage-daemon's outcome and ours. A scenario where the
    /// events differ on purpose passes <paramref name="sameEvents"/> false and pins both lists itself.
    /// </summary>
    public static async Task<(Outcome Qsd, Outcome Ours)> OnBothAsync(TempDirectory root, Func<string, Task> prepare,
        Func<string, string[]> blockdevs, string exportNode, Func<IotestSession, Task> script, bool sameEvents = true)
    {
        DifferentialDaemon[] daemons = [DifferentialDaemon.Qsd(), DifferentialDaemon.Ours()];
        var outcomes = new Outcome[daemons.Length];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Directory.CreateDirectory(Path.Combine(root.Path, daemons[i].Name)).FullName;
            await prepare(dir);
            List<string> log = [];
            var events = await daemons[i].RunAsync(dir, blockdevs(dir), exportNode, (qmp, uri) => script(new IotestSession(qmp, dir, uri, log)));
            outcomes[i] = new Outcome(events, log, dir);
        }

        var (qsd, ours) = (outcomes[0], outcomes[1]);
        AssertSameLines("log", qsd.Log, ours.Log);
        if (sameEvents)
        {
            AssertSameLines("events", qsd.Events, ours.Events);
        }

        return (qsd, ours);
    }

    static void AssertSameLines(string what, List<string> qsd, List<string> ours) =>
        Assert.True(qsd.SequenceEqual(ours),
            $"{what} differ\nqemu-storage-daemon:\n  {string.Join("\n  ", qsd)}\nblockmirror serve:\n  {string.Join("\n  ", ours)}");

    /// <summary>A qcow2 layer over its file node: <c>--blockdev</c> options for DIR/<paramref name="file"/> as node <paramref name="node"/>.</summary>
    public static string[] Qcow2Node(string dir, string node, string file, string? backing = null) =>
    [
        "--blockdev", $"driver=file,node-name={node}-file,filename={dir}/{file}",
        "--blockdev", $"driver=qcow2,node-name={node},file={node}-file{(backing is null ? "" : $",backing={backing}")}",
    ];

    /// <summary>A raw node over its file node.</summary>
    public static string[] RawNode(string dir, string node, string file) =>
    [
        "--blockdev", $"driver=file,node-name={node}-file,filename={dir}/{file}",
        "--blockdev", $"driver=raw,node-name={node},file={node}-file",
    ];

    /// <summary>Fails unless the file has the same content in both daemons' directories (qemu-img compare).</summary>
    public static Task AssertSameImageAsync(Outcome qsd, Outcome ours, string file, string format = "qcow2") =>
        QemuImages.AssertIdenticalAsync($"{qsd.Dir}/{file}", $"{ours.Dir}/{file}", format, format);

    /// <summary>
    /// The chain <c>qemu-img info --backing-chain</c> reports for the file: each image with its format and the
    /// backing file (and format) its header names, the directory written as DIR; so both daemons' results
    /// can be compared line by line.
    /// </summary>
    public static async Task<string> BackingChainAsync(string dir, string file)
    {
        using var info = JsonDocument.Parse(await ExternalTool.RunCheckedAsync("qemu-img", "info", "--output=json", "--backing-chain", $"{dir}/{file}"));
        return string.Join(" <- ", info.RootElement.EnumerateArray().Reverse().Select(image =>
        {
            var line = $"{image.GetProperty("filename").GetString()} ({image.GetProperty("format").GetString()})";
            if (image.TryGetProperty("backing-filename", out var backing))
            {
                line += $" backing {backing.GetString()}";
                if (image.TryGetProperty("backing-filename-format", out var format))
                {
                    line += $" ({format.GetString()})";
                }
            }

            return line.Replace(dir, "DIR", StringComparison.Ordinal);
        }));
    }

    /// <summary>Fails unless the chain of the file is the same in both directories and is <paramref name="expected"/>.</summary>
    public static async Task AssertBackingChainAsync(Outcome qsd, Outcome ours, string file, string expected)
    {
        var theirs = await BackingChainAsync(qsd.Dir, file);
        Assert.Equal(expected, theirs);
        Assert.Equal(theirs, await BackingChainAsync(ours.Dir, file));
    }
}

/// <summary>One daemon's side of a scenario: its monitor, its directory, its NBD export and what the script logs.</summary>
sealed class IotestSession(QmpClient qmp, string dir, string uri, List<string> log)
{
    public QmpClient Qmp { get; } = qmp;

    public string Dir { get; } = dir;

    /// <summary>The NBD URI of the exported node (writable).</summary>
    public string Uri { get; } = uri;

    public List<string> Log { get; } = log;

    /// <summary>Runs a command and logs "command: ok" or its error class and text (DIR for the directory).</summary>
    public async Task<JsonObject> TryAsync(string command, JsonObject? arguments = null)
    {
        var reply = await Qmp.CommandAsync(command, arguments);
        var said = reply["error"] is { } error ? $"{(string?)error["class"]}: {(string?)error["desc"]}" : "ok";
        Log.Add($"{command}: {said}".Replace(Dir, "DIR", StringComparison.Ordinal));
        return reply;
    }

    /// <summary>Runs a command that must succeed (logged) and returns its return value.</summary>
    public async Task<JsonNode?> RunAsync(string command, JsonObject? arguments = null)
    {
        var reply = await TryAsync(command, arguments);
        return reply.TryGetPropertyValue("return", out var value) ? value : throw new InvalidOperationException($"{command} failed: {reply.ToJsonString()}");
    }

    public Task WaitReadyAsync() => Qmp.WaitEventAsync("BLOCK_JOB_READY");

    public Task WaitStatusAsync(string status) => Qmp.WaitEventAsync("JOB_STATUS_CHANGE", e => (string?)e["data"]!["status"] == status);

    public Task WaitGoneAsync() => DifferentialDaemon.WaitJobGoneAsync(Qmp);

    /// <summary>QEMU's complete_and_wait: READY, block-job-complete, and the job gone.</summary>
    public async Task CompleteAndWaitAsync(string job = "job0")
    {
        await WaitReadyAsync();
        await RunAsync("block-job-complete", new JsonObject { ["device"] = job });
        await WaitGoneAsync();
    }

    /// <summary>Logs what query-block-jobs shows of the one job: the fields a test can compare.</summary>
    public async Task LogJobAsync(params string[] fields)
    {
        var jobs = (await Qmp.ExecuteAsync("query-block-jobs"))!.AsArray();
        Log.Add("query-block-jobs: " + string.Join("; ", jobs.Select(j => string.Join(", ", fields.Select(f => $"{f}={j![f]?.ToJsonString()}")))));
    }

    /// <summary>Logs "exported: FILE", the file of the node the export serves now: where the guest's writes go after a switch-over.</summary>
    public async Task LogExportedFileAsync()
    {
        var exports = (await Qmp.ExecuteAsync("query-block-exports"))!.AsArray();
        var nodeName = (string?)exports.Single()!["node-name"];
        var nodes = (await Qmp.ExecuteAsync("query-named-block-nodes", new JsonObject { ["flat"] = true }))!.AsArray();
        var file = (string?)nodes.Single(n => (string?)n!["node-name"] == nodeName)!["file"];
        Log.Add($"exported: {file?.Replace(Dir, "DIR", StringComparison.Ordinal)}");
    }
}
