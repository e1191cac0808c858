using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// Every job verb, job-* and block-job-*, in every state a mirror job can be held in on qemu-storage-daemon
/// 7.2, run unchanged on it and on <c>blockmirror serve</c>: the reply, the state the job settles in, and the
/// job's events up to its end at quit must be the same. Each (state, verb) pair gets a job of its own, on
/// null-co nodes of its own.
/// </summary>
/// <remarks>
/// Created, waiting and aborting pass too quickly to be held from QMP (created only inside a transaction;
/// waiting only while other jobs of a transaction run), so they are not in the table; "gone" is a job that
/// completed and was dismissed, which the verbs must not find. A running job is held there by a speed limit
/// on a 64 MiB source; ready, pending and concluded by a small source, with auto-finalize or auto-dismiss off.
/// </remarks>
public sealed class JobVerbTableDifferentialTests
{

    /// <summary>A verb: its command, its arguments for a job id, and the states a job it was accepted by settles in (none: no wait).</summary>
    sealed record Verb(string Name, string Command, Func<string, JsonObject> Arguments, string[] SettlesIn);

    /// <summary>Every job's source and target: 4 MiB, which a slow job copies in 64 s.</summary>
    const long Size = 4 << 20;

    static readonly string[] Ended = ["concluded", JobQmp.Gone];

    static readonly Verb[] Verbs =
    [
        new("job-pause", "job-pause", id => new() { ["id"] = id }, ["paused", "standby"]),
        new("job-resume", "job-resume", id => new() { ["id"] = id }, ["running", "ready"]),
        new("job-cancel", "job-cancel", id => new() { ["id"] = id }, Ended),
        // A job completed in standby completes once resumed; until then it stays in standby.
        new("job-complete", "job-complete", id => new() { ["id"] = id }, ["standby", "pending", .. Ended]),
        new("job-finalize", "job-finalize", id => new() { ["id"] = id }, Ended),
        new("job-dismiss", "job-dismiss", id => new() { ["id"] = id }, [JobQmp.Gone]),
        new("block-job-pause", "block-job-pause", id => new() { ["device"] = id }, ["paused", "standby"]),
        new("block-job-resume", "block-job-resume", id => new() { ["device"] = id }, ["running", "ready"]),

        // A soft cancel of a job that has finished its work (pending) is ignored: the job stays.
        new("block-job-cancel", "block-job-cancel", id => new() { ["device"] = id }, ["pending", .. Ended]),
        new("block-job-cancel force", "block-job-cancel", id => new() { ["device"] = id, ["force"] = true }, Ended),
        new("block-job-complete", "block-job-complete", id => new() { ["device"] = id }, ["standby", "pending", .. Ended]),
        new("block-job-finalize", "block-job-finalize", id => new() { ["id"] = id }, Ended),
        new("block-job-dismiss", "block-job-dismiss", id => new() { ["id"] = id }, [JobQmp.Gone]),
        new("block-job-set-speed", "block-job-set-speed", id => new() { ["device"] = id, ["speed"] = 131072 }, []),
    ];

    public static TheoryData<string> States => ["running", "paused", "ready", "standby", "pending", "concluded", JobQmp.Gone];

    [SkippableTheory]
    [MemberData(nameof(States))]
    public async Task Every_verb_in_this_state_is_answered_and_acted_on_as_qemu_storage_daemon_does(string state)
    {
        var (qsd, ours) = await JobQmp.OnBothAsync($"job-verbs-{state}", (daemon, dir) => RunAsync(daemon, dir, state));
        JobQmp.AssertSame(qsd, ours);
    }

    /// <summary>One line per verb: the reply and the settled state; then one line per job: its events.</summary>
    static async Task<List<string>> RunAsync(DifferentialDaemon daemon, string dir, string state)
    {
        var slow = state is "running" or "paused";
        List<string> blockdevs = [.. JobQmp.NullNode("exp", Size)];
        if (slow)
        {
            await QemuImages.CreateAsync($"{dir}/data.raw", $"{Size}", $"write -P 0x5a 0 {Size}");
        }

        for (var k = 0; k < Verbs.Length; k++)
        {
            // The slow jobs read data (null-co's ranges may be zeroed, which costs no time), all from one
            // file: every node opens it without locks, and none writes it.
            blockdevs.AddRange(slow
                ? JobQmp.DataNode($"s{k}", $"{dir}/data.raw")
                : JobQmp.NullNode($"s{k}", Size));
            blockdevs.AddRange(JobQmp.NullNode($"t{k}", Size));
        }

        var lines = new List<string>();
        QmpClient? client = null;
        await daemon.RunAsync(dir, [.. blockdevs], "exp", async (qmp, _) =>
        {
            client = qmp;
            for (var k = 0; k < Verbs.Length; k++)
            {
                var id = $"j{k}";
                var mirror = new JsonObject
                {
                    ["job-id"] = id, ["device"] = $"s{k}", ["target"] = $"t{k}", ["sync"] = "full",
                    ["auto-finalize"] = state != "pending", ["auto-dismiss"] = state != "concluded",
                };
                if (slow)
                {
                    // One 64 KiB chunk a second, as iotest 218 holds a job before convergence.
                    mirror["speed"] = 65536;
                    mirror["buf-size"] = 65536;
                }

                await qmp.ExecuteAsync("blockdev-mirror", mirror);
                await BringToAsync(qmp, id, state);
                var verb = Verbs[k];
                var reply = await JobQmp.ReplyAsync(qmp, verb.Command, verb.Arguments(id));
                var settlesIn = SettlesIn(verb, state);
                var settled = reply == "ok" && settlesIn.Length > 0
                    ? await JobQmp.WaitStatusAsync(qmp, id, settlesIn)
                    : await JobQmp.StatusAsync(qmp, id);
                lines.Add($"{verb.Name} in {state}: {reply}; then {settled}");
            }
        });

        for (var k = 0; k < Verbs.Length; k++)
        {
            lines.Add($"{Verbs[k].Name} in {state}, events: {string.Join(", ", JobQmp.WithoutDrainPauses(JobQmp.EventsOf(client!.Events, $"j{k}")))}");
        }

        return lines;
    }

    /// <summary>
    /// Where a job the verb was accepted by stops, in this state: a job passes through pending without
    /// stopping when it finalizes itself, through concluded when it dismisses itself, and only a job that
    /// was in standby stays there.
    /// </summary>
    static string[] SettlesIn(Verb verb, string state) =>
    [
        .. verb.SettlesIn.Where(status => status switch
        {
            "pending" => state == "pending",
            "concluded" => state == "concluded",
            "standby" => state == "standby" || verb.Command.EndsWith("pause", StringComparison.Ordinal),
            _ => true,
        }),
    ];

    /// <summary>Moves a just-started mirror job to <paramref name="state"/> and waits until it is there.</summary>
    static async Task BringToAsync(QmpClient qmp, string id, string state)
    {
        switch (state)
        {
            case "running":
                await JobQmp.WaitStatusAsync(qmp, id, "running");
                break;
            case "paused":
                await qmp.ExecuteAsync("job-pause", new JsonObject { ["id"] = id });
                await JobQmp.WaitStatusAsync(qmp, id, "paused");
                break;
            case "ready":
                await JobQmp.WaitStatusAsync(qmp, id, "ready");
                break;
            case "standby":
                await JobQmp.WaitStatusAsync(qmp, id, "ready");
                await qmp.ExecuteAsync("job-pause", new JsonObject { ["id"] = id });
                await JobQmp.WaitStatusAsync(qmp, id, "standby");
                break;
            case "pending" or "concluded" or JobQmp.Gone:
                await JobQmp.WaitStatusAsync(qmp, id, "ready");
                await qmp.ExecuteAsync("job-complete", new JsonObject { ["id"] = id });
                await JobQmp.WaitStatusAsync(qmp, id, state);
                break;
        }
    }
}
