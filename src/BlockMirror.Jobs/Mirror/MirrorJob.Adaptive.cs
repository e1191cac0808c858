namespace BlockMirror.Jobs.Mirror;

/// <summary>The adaptive copy mode: its policy decides, once per turn of the copy loop, whether guest writes block.</summary>
public sealed partial class MirrorJob
{
    // The copy loop's own; a fresh one each time the job enters the adaptive mode.
    AdaptiveCopyPolicy? _adaptive;

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

        var policy = _adaptive ??= new AdaptiveCopyPolicy();
        if (!policy.Evaluate(Time.GetElapsedTime(0, Time.GetTimestamp()), IsReady, GetProgress()))
        {
            return;
        }

        lock (Lock)
        {
            // A block-job-change that landed since the look above wins: it set the mode's own answer.
            if (CopyMode == MirrorCopyMode.Adaptive)
            {
                SetWritesBlocking(policy.WritesBlocking);
            }
        }

        _rates.Restart();
    }
}
