using BlockMirror.Block.Io;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Jobs.Tests.Mirror;

namespace BlockMirror.Jobs.Tests.Policies;

/// <summary>
/// Every error policy against one injected error, for each job that copies (mirror, active commit,
/// intermediate commit) and each side (reading the source, writing the destination, and for the commit
/// job asking what lies above the base), on a qcow2 chain
/// with blkdebug under the files (<see cref="PolicyChain"/>). A job that succeeds must leave its
/// destination holding exactly what its source reads: a policy may delay a chunk, never drop it.
/// </summary>
public sealed class PolicyMatrixTests
{
    /// <summary>Policy, errno, and the action QEMU 7.2's block_job_error_action takes for them.</summary>
    static readonly (BlockdevOnError Policy, BlockErrno Errno, BlockErrorAction Action)[] Decisions =
    [
        (BlockdevOnError.Report, BlockErrno.EIO, BlockErrorAction.Report),
        (BlockdevOnError.Report, BlockErrno.ENOSPC, BlockErrorAction.Report),
        (BlockdevOnError.Ignore, BlockErrno.EIO, BlockErrorAction.Ignore),
        (BlockdevOnError.Ignore, BlockErrno.ENOSPC, BlockErrorAction.Ignore),
        (BlockdevOnError.Stop, BlockErrno.EIO, BlockErrorAction.Stop),
        (BlockdevOnError.Stop, BlockErrno.ENOSPC, BlockErrorAction.Stop),
        (BlockdevOnError.Enospc, BlockErrno.EIO, BlockErrorAction.Report),
        (BlockdevOnError.Enospc, BlockErrno.ENOSPC, BlockErrorAction.Stop),
        (BlockdevOnError.Auto, BlockErrno.EIO, BlockErrorAction.Report),
        (BlockdevOnError.Auto, BlockErrno.ENOSPC, BlockErrorAction.Stop),
    ];

    public static TheoryData<PolicyJob, FaultSide, BlockdevOnError, BlockErrno, BlockErrorAction> Cells
    {
        get
        {
            var cells = new TheoryData<PolicyJob, FaultSide, BlockdevOnError, BlockErrno, BlockErrorAction>();
            foreach (var job in Enum.GetValues<PolicyJob>())
            {
                foreach (var side in Enum.GetValues<FaultSide>())
                {
                    if (side == FaultSide.SourceBlockStatus && job != PolicyJob.IntermediateCommit)
                    {
                        // A mirror job puts no block-status error through its policy, as in QEMU: in the
                        // copy loop it copies what it cannot tell, and a failed initial scan fails the job.
                        continue;
                    }

                    foreach (var (policy, errno, action) in Decisions)
                    {
                        cells.Add(job, side, policy, errno, action);
                    }
                }
            }

            return cells;
        }
    }

    [Theory]
    [MemberData(nameof(Cells))]
    public async Task One_error_ends_as_the_policy_says_and_no_data_is_lost(PolicyJob kind, FaultSide side, BlockdevOnError policy, BlockErrno errno,
        BlockErrorAction action)
    {
        await using var chain = await PolicyChain.CreateAsync();
        var expected = await chain.ReadExpectedAsync(kind);

        // Under ignore the error strikes once, so the retry gets through. Otherwise it persists: a stopped
        // job must stay stopped until the user has removed the cause.
        var (debug, rule) = await chain.InjectAsync(kind, side, errno, once: action == BlockErrorAction.Ignore);
        var job = await chain.StartAsync(kind, policy);
        var error = $"BLOCK_JOB_ERROR {(side == FaultSide.TargetWrite ? "write" : "read")} {action.ToWireName()}";

        if (action == BlockErrorAction.Report)
        {
            await job.Finished.WaitAsync(MirrorTestRunner.Limit);
            Assert.Equal(["created", "running", error, "aborting", "BLOCK_JOB_COMPLETED (error)", "concluded", "null"], chain.Log.Names);
            Assert.Equal(errno, Assert.IsType<BlockIOException>(job.Failure).Errno);
            Assert.Equal(1, debug.InjectedCount);
            return;
        }

        string[] head = ["created", "running", error];
        if (action == BlockErrorAction.Stop)
        {
            await StoppedJob.AssertStoppedAsync(chain.Log, job, JobStatus.Paused, errno == BlockErrno.ENOSPC ? IoStatus.Nospace : IoStatus.Failed);
            Assert.Equal([.. head, "paused"], chain.Log.Names);
            debug.RemoveRule(rule);
            job.Resume();
            Assert.Equal(IoStatus.Ok, job.IoStatus);
            head = [.. head, "paused", "running"];
        }

        string[] tail;
        if (job is MirrorJob mirror)
        {
            await MirrorTestRunner.CompleteWhenReadyAsync(chain.Manager, mirror);
            tail = ["ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"];
        }
        else
        {
            await job.Finished.WaitAsync(MirrorTestRunner.Limit);
            tail = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"];
        }

        Assert.Equal([.. head, .. tail], chain.Log.Names);
        Assert.Null(job.Error);
        Assert.Equal(1, debug.InjectedCount);
        Assert.Equal(action == BlockErrorAction.Ignore ? 1 : 0, job.IgnoredErrors);
        MirrorRig.AssertSameBytes(expected, await chain.ReadDestinationAsync(kind), $"{kind} destination vs source");
    }
}
