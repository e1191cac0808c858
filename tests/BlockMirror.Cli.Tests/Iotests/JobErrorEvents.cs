using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests.Iotests;

/// <summary>
/// Telling a job's stop on error from the short pauses of drained sections. A job also goes to paused
/// (standby when READY) and straight back while the graph around it is drained, e.g. when an NBD client
/// connects or leaves; how often that shows depends on timing, on both daemons. A script acts on a pause
/// only when an error it has not yet answered came before it, and the comparison leaves those short
/// pauses out.
/// </summary>
static class JobErrorEvents
{
    /// <summary>True, and counts it answered, when a BLOCK_JOB_ERROR has arrived that <paramref name="answered"/> does not yet count.</summary>
    public static bool TakeUnanswered(QmpClient qmp, ref int answered)
    {
        if (qmp.Events.Count(e => (string?)e["event"] == "BLOCK_JOB_ERROR") <= answered)
        {
            return false;
        }

        answered++;
        return true;
    }

    /// <summary>
    /// The events without the pause-and-back pairs (paused, running or standby, ready) that no error
    /// preceded (<see cref="DifferentialDaemon.Describe"/>'s words).
    /// </summary>
    public static List<string> WithoutDrainPauses(IReadOnlyList<string> events)
    {
        var kept = new List<string>();
        for (var i = 0; i < events.Count; i++)
        {
            var pause = events[i] is "JOB_STATUS_CHANGE paused" or "JOB_STATUS_CHANGE standby";
            var back = i + 1 < events.Count && events[i + 1] is "JOB_STATUS_CHANGE running" or "JOB_STATUS_CHANGE ready";
            if (pause && back && (kept.Count == 0 || !kept[^1].StartsWith("BLOCK_JOB_ERROR", StringComparison.Ordinal)))
            {
                i++;
                continue;
            }

            kept.Add(events[i]);
        }

        return kept;
    }
}
