namespace BlockMirror.Jobs.Mirror;

/// <summary>The adaptive copy mode: its policy decides, once per turn of the copy loop, whether guest writes block.</summary>
public sealed partial class MirrorJob
{
    // The copy loop's own; a fresh one each time the job enters the adaptive mode. A block-job-change
    // can leave adaptive and come back between two turns of the loop, so entering is counted
    // (ChangeCopyMode) rather than seen: a policy kept across such a change would still hold its old
    // answer (final from READY) while the change had set writes not to block, and never set them again.
    AdaptiveCopyPolicy? _adaptive;
    int _adaptiveEntered;
    int _adaptiveSeen;

    /// <summary>
    /// In adaptive mode, asks the policy and applies its answer; restarts the rate window on every switch,
    /// since rates measured in one mode say nothing about the other (while writes block they dirty almost
    /// nothing).
    /// </summary>
    void RunAdaptivePolicy()
    {
        if (CopyMode != MirrorCopyMode.Adaptive)
        {
            _adaptive = null;
            return;
        }

        var entered = Volatile.Read(ref _adaptiveEntered);
        if (_adaptive is null || entered != _adaptiveSeen)
        {
            _adaptive = new AdaptiveCopyPolicy();
            _adaptiveSeen = entered;
        }

        var policy = _adaptive;
        if (!policy.Evaluate(Time.GetElapsedTime(0, Time.GetTimestamp()), IsReady, GetProgress()))
        {
            return;
        }

        lock (Lock)
        {
            // A block-job-change that landed since the look above wins: it set the mode's own answer
            // (and a return to adaptive starts a fresh policy at the next turn).
            if (CopyMode == MirrorCopyMode.Adaptive && _adaptiveEntered == _adaptiveSeen && !_finishing)
            {
                SetWritesBlocking(policy.WritesBlocking);
            }
        }

        _rates.Restart();
    }
}
