namespace BlockMirror.Jobs.Tests;

/// <summary>
/// <see cref="JobStateTable"/> against QEMU 7.2's job.c tables, written out here a second time, so that a
/// change to the code's tables fails a test instead of quietly changing what users may do.
/// </summary>
public sealed class JobStateTableTests
{
    /// <summary>The columns of both tables, in QEMU's order: U, C, R, P, Y, S, W, D, X, E, N.</summary>
    internal static readonly JobStatus[] Columns =
    [
        JobStatus.Undefined, JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby,
        JobStatus.Waiting, JobStatus.Pending, JobStatus.Aborting, JobStatus.Concluded, JobStatus.Null,
    ];

    /// <summary>QEMU 7.2 JobVerbTable.</summary>
    static readonly Dictionary<JobVerb, int[]> QemuVerbs = new()
    {
        //                              U  C  R  P  Y  S  W  D  X  E  N
        [JobVerb.Cancel] = /*       */ [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [JobVerb.Pause] = /*        */ [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [JobVerb.Resume] = /*       */ [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [JobVerb.SetSpeed] = /*     */ [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [JobVerb.Complete] = /*     */ [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
        [JobVerb.Finalize] = /*     */ [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        [JobVerb.Dismiss] = /*      */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],

        // QEMU 8.2 (block-job-change).
        [JobVerb.Change] = /*       */ [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    };

    /// <summary>QEMU 7.2 JobSTT: row = from, column = to.</summary>
    static readonly Dictionary<JobStatus, int[]> QemuTransitions = new()
    {
        //                                      U  C  R  P  Y  S  W  D  X  E  N
        [JobStatus.Undefined] = /*          */ [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [JobStatus.Created] = /*            */ [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1],
        [JobStatus.Running] = /*            */ [0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0],
        [JobStatus.Paused] = /*             */ [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [JobStatus.Ready] = /*              */ [0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0],
        [JobStatus.Standby] = /*            */ [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        [JobStatus.Waiting] = /*            */ [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        [JobStatus.Pending] = /*            */ [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
        [JobStatus.Aborting] = /*           */ [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
        [JobStatus.Concluded] = /*          */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [JobStatus.Null] = /*               */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// <summary>Does QEMU accept <paramref name="verb"/> in <paramref name="status"/>? For the live-job tests.</summary>
    internal static bool QemuAccepts(JobStatus status, JobVerb verb) => QemuVerbs[verb][Array.IndexOf(Columns, status)] == 1;

    [Fact]
    public void States_and_verbs_are_QEMUs_in_QEMUs_order()
    {
        Assert.Equal(
            ["undefined", "created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting", "concluded", "null"],
            Enum.GetValues<JobStatus>().Select(s => s.ToWireName()));
        Assert.Equal(Columns, Enum.GetValues<JobStatus>());
        Assert.Equal(["cancel", "pause", "resume", "set-speed", "complete", "finalize", "dismiss", "change"],
            Enum.GetValues<JobVerb>().Select(v => v.ToWireName()));
    }

    [Fact]
    public void Every_state_and_verb_pair_matches_QEMUs_verb_table()
    {
        List<string> wrong = [];
        foreach (var verb in Enum.GetValues<JobVerb>())
        {
            foreach (var status in Columns)
            {
                var expected = QemuAccepts(status, verb);
                if (JobStateTable.Accepts(status, verb) != expected)
                {
                    wrong.Add($"{verb.ToWireName()} in {status.ToWireName()}: QEMU {(expected ? "accepts" : "refuses")} it");
                }
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
        Assert.Equal(8 * 11, Enum.GetValues<JobVerb>().Length * Columns.Length);
    }

    [Fact]
    public void Every_transition_pair_matches_QEMUs_transition_table()
    {
        List<string> wrong = [];
        foreach (var from in Columns)
        {
            for (var column = 0; column < Columns.Length; column++)
            {
                var to = Columns[column];
                var expected = QemuTransitions[from][column] == 1;
                if (JobStateTable.CanTransition(from, to) != expected)
                {
                    wrong.Add($"{from.ToWireName()} -> {to.ToWireName()}: QEMU {(expected ? "allows" : "forbids")} it");
                }
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
    }

    [Fact]
    public void The_allowed_transitions_are_exactly_these()
    {
        // The same table as a list, as the design notes give it: a reader checks this one at a glance.
        string[] expected =
        [
            "undefined->created",
            "created->running", "created->aborting", "created->null",
            "running->paused", "running->ready", "running->waiting", "running->aborting",
            "paused->running",
            "ready->standby", "ready->waiting", "ready->aborting",
            "standby->ready",
            "waiting->pending", "waiting->aborting",
            "pending->aborting", "pending->concluded",
            "aborting->aborting", "aborting->concluded",
            "concluded->null",
        ];
        var actual = Columns.SelectMany(from => Columns.Where(to => JobStateTable.CanTransition(from, to))
            .Select(to => $"{from.ToWireName()}->{to.ToWireName()}"));
        Assert.Equal(expected, actual);
    }

    [Theory]
    [InlineData(JobStatus.Pending, JobVerb.Pause, "Job 'job0' in state 'pending' cannot accept command verb 'pause'")]
    [InlineData(JobStatus.Running, JobVerb.SetSpeed, "Job 'job0' in state 'running' cannot accept command verb 'set-speed'")]
    [InlineData(JobStatus.Null, JobVerb.Dismiss, "Job 'job0' in state 'null' cannot accept command verb 'dismiss'")]
    public void The_refusal_is_worded_as_QEMUs(JobStatus status, JobVerb verb, string expected) =>
        Assert.Equal(expected, JobStateTable.RefusalMessage("job0", status, verb));
}
