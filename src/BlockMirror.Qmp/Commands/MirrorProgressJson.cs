using System.Text.Json.Nodes;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// A mirror's (or active commit's) measured progress as members of its <c>query-block-jobs</c> entry, ours
/// beside QEMU's, which stay as they are: <c>remaining</c> (bytes dirty or in flight), <c>copy-rate</c> and
/// <c>dirty-rate</c> (bytes per second over the last few seconds), and once the rates are measured
/// <c>converging</c> (false: it will not converge at this rate) with, when true, <c>eta-seconds</c>. The
/// command line's <c>--json</c> PROGRESS lines carry the same members.
/// </summary>
public static class MirrorProgressJson
{
    public static void AddTo(JsonObject target, MirrorProgress progress)
    {
        target["remaining"] = progress.Remaining;
        target["copy-rate"] = (long)Math.Round(progress.CopyRate);
        target["dirty-rate"] = (long)Math.Round(progress.DirtyRate);
        if (progress.Converging is { } converging)
        {
            target["converging"] = converging;
        }

        if (progress.Eta is { } eta)
        {
            target["eta-seconds"] = (long)Math.Ceiling(eta.TotalSeconds);
        }
    }
}
