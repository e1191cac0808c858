using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// What the job differential tests share: a command's reply in comparable words, a job's status from
/// query-jobs, waiting for a status, and a job's own events, with the pauses a drain causes taken out.
/// </summary>
static class JobQmp
{
    /// <summary>The status query-jobs shows for a job that is gone.</summary>
    public const string Gone = "gone";

    /// <summary>"ok", or the error's class and text.</summary>
    public static async Task<string> ReplyAsync(QmpClient qmp, string command, JsonObject? arguments = null)
    {
        var reply = await qmp.CommandAsync(command, arguments);
        return reply["error"] is { } error ? $"{(string?)error["class"]}: {(string?)error["desc"]}" : "ok";
    }

    /// <summary>The job's status in query-jobs, or <see cref="Gone"/>.</summary>
    public static async Task<string> StatusAsync(QmpClient qmp, string id)
    {
        var jobs = (await qmp.ExecuteAsync("query-jobs"))!.AsArray();
        return jobs.FirstOrDefault(j => (string?)j!["id"] == id) is { } job ? (string)job["status"]! : Gone;
    }

    /// <summary>
    /// Polls query-jobs until the job is in one of <paramref name="statuses"/>; returns it. Fails after a
    /// minute with the status it stayed in (a wait, not a timing assertion: either daemon gets there at once).
    /// </summary>
    public static async Task<string> WaitStatusAsync(QmpClient qmp, string id, params string[] statuses)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var status = await StatusAsync(qmp, id);
            if (statuses.Contains(status))
            {
                return status;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"job '{id}' stayed {status}, expected {string.Join(" or ", statuses)}");
            }

            await Task.Delay(10);
        }
    }

    /// <summary>Events that concern one job (JOB_STATUS_CHANGE by id, BLOCK_JOB_* by device), described.</summary>
    public static List<string> EventsOf(IEnumerable<JsonObject> events, string id) =>
        [.. events.Where(e => (string?)e["data"]?["id"] == id || (string?)e["data"]?["device"] == id).Select(DifferentialDaemon.Describe)];

    /// <summary>
    /// Takes out each pause that is undone by the very next change (paused then running, standby then
    /// ready): qemu-storage-daemon drains the nodes, pausing jobs for a moment, whenever the graph changes
    /// (an export closing at quit, a mirror's filter going); how many such blips it shows depends on timing.
    /// </summary>
    public static List<string> WithoutDrainPauses(IReadOnlyList<string> events)
    {
        var kept = new List<string>();
        for (var i = 0; i < events.Count; i++)
        {
            if (i + 1 < events.Count && (events[i], events[i + 1]) is
                ("JOB_STATUS_CHANGE paused", "JOB_STATUS_CHANGE running") or ("JOB_STATUS_CHANGE standby", "JOB_STATUS_CHANGE ready"))
            {
                i++;
                continue;
            }

            kept.Add(events[i]);
        }

        return kept;
    }

    /// <summary>
    /// The events of a run ended by quit, with the drain pauses of the quit taken out: those after the export's
    /// deletion, which is the first thing quit does (the tests export a node no job uses, so its closing
    /// pauses none). Earlier pauses are the script's own and stay.
    /// </summary>
    public static List<string> WithoutQuitDrainPauses(IReadOnlyList<string> events)
    {
        var quit = events.ToList().IndexOf("BLOCK_EXPORT_DELETED");
        return quit < 0 ? [.. events] : [.. events.Take(quit + 1), .. WithoutDrainPauses([.. events.Skip(quit + 1)])];
    }

    /// <summary>
    /// Runs a scenario on qemu-storage-daemon, then on <c>blockmirror serve</c>, each in a new directory of its
    /// own (removed after); returns what each produced, to be compared.
    /// </summary>
    public static async Task<(List<string> Qsd, List<string> Ours)> OnBothAsync(string name, Func<DifferentialDaemon, string, Task<List<string>>> scenario)
    {
        var qsd = DifferentialDaemon.Qsd();
        var ours = DifferentialDaemon.Ours();
        using var root = new TempDirectory($"blockmirror-{name}-");
        return (await scenario(qsd, Directory.CreateDirectory(Path.Combine(root.Path, qsd.Name)).FullName),
            await scenario(ours, Directory.CreateDirectory(Path.Combine(root.Path, ours.Name)).FullName));
    }

    /// <summary>Fails unless both daemons produced the same lines, shown one per line when they differ.</summary>
    public static void AssertSame(List<string> qsd, List<string> ours) => Assert.Equal(string.Join('\n', qsd), string.Join('\n', ours));

    /// <summary>A node reading a raw file of data without taking its lock: several jobs' sources over one file none of them writes.</summary>
    public static string[] DataNode(string name, string path) => ["--blockdev", $"driver=file,node-name={name},filename={path},locking=off"];

    /// <summary>A null-co node of this many bytes (reads return whatever, writes go nowhere): a job's source or target.</summary>
    public static string[] NullNode(string name, long size) => ["--blockdev", $"driver=null-co,node-name={name},size={size}"];
}
