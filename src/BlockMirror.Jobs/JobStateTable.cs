namespace BlockMirror.Jobs;

/// <summary>
/// QEMU's two job tables (job.c, as of QEMU 7.2): which state may follow which, and which verb a
/// state accepts. Every transition is checked against the first; every user verb against the second,
/// before it does anything.
/// </summary>
public static class JobStateTable
{
    // Columns (and rows of Transitions): U, C, R, P, Y, S, W, D, X, E, N
    // = undefined, created, running, paused, ready, standby, waiting, pending, aborting, concluded, null.
    static readonly bool[,] Transitions = ToTable(
        /* U */ "01000000000",
        /* C */ "00100000101",
        /* R */ "00011010100",
        /* P */ "00100000000",
        /* Y */ "00000110100",
        /* S */ "00001000000",
        /* W */ "00000001100",
        /* D */ "00000000110",
        /* X */ "00000000110",
        /* E */ "00000000001",
        /* N */ "00000000000");

    // Rows in JobVerb order: cancel, pause, resume, set-speed, complete, finalize, dismiss, and change
    // (block-job-change, from QEMU 8.2's table: the set-speed row).
    static readonly bool[,] Verbs = ToTable(
        /* cancel    */ "01111111000",
        /* pause     */ "01111100000",
        /* resume    */ "01111100000",
        /* set-speed */ "01111100000",
        /* complete  */ "00001100000",
        /* finalize  */ "00000001000",
        /* dismiss   */ "00000000010",
        /* change    */ "01111100000");

    static bool[,] ToTable(params string[] rows)
    {
        var table = new bool[rows.Length, rows[0].Length];
        for (var r = 0; r < rows.Length; r++)
        {
            for (var c = 0; c < rows[r].Length; c++)
            {
                table[r, c] = rows[r][c] == '1';
            }
        }

        return table;
    }

    /// <summary>May a job in state <paramref name="from"/> move to <paramref name="to"/>?</summary>
    public static bool CanTransition(JobStatus from, JobStatus to) => Transitions[(int)from, (int)to];

    /// <summary>Does a job in state <paramref name="status"/> accept <paramref name="verb"/>?</summary>
    public static bool Accepts(JobStatus status, JobVerb verb) => Verbs[(int)verb, (int)status];

    /// <summary>QEMU's refusal text.</summary>
    public static string RefusalMessage(string jobId, JobStatus status, JobVerb verb) =>
        $"Job '{jobId}' in state '{status.ToWireName()}' cannot accept command verb '{verb.ToWireName()}'";
}
