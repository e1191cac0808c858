namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>How a concurrency test ends its mirror or active commit.</summary>
enum JobEnding
{
    /// <summary>Complete after READY: the writers move to the target.</summary>
    Complete,

    /// <summary>Cancel (not forced) after READY: the target is a point-in-time copy, the writers stay.</summary>
    CancelAfterReady,

    /// <summary>Forced cancel at a random moment.</summary>
    ForceCancel,
}
