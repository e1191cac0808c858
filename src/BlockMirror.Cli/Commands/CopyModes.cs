using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>--copy-mode</c> of <c>mirror</c>, <c>commit</c> and <c>demo</c>: QMP's two modes by their QMP names, and
/// ours as plain <c>adaptive</c> (over QMP it carries a downstream-extension name no QEMU client meets by accident).
/// </summary>
static class CopyModes
{
    public const string Help = "How guest writes reach the target: background (copied later), write-blocking (written to both before they complete), or adaptive (background while the copy gains on the writers, write-blocking when it would not converge and from READY on)";

    /// <summary>Our mode by its plain name; QMP's two by theirs. QMP's extension name for ours is not taken here.</summary>
    public static MirrorCopyMode Parse(string text) =>
        text == "adaptive" ? MirrorCopyMode.Adaptive
        : MirrorNames.TryParseCopyMode(text, out var mode) && mode != MirrorCopyMode.Adaptive ? mode
        : throw new UsageException($"--copy-mode: unknown copy mode '{text}' (expected background, write-blocking or adaptive)");

    /// <summary>The command line's name of a mode.</summary>
    public static string Name(MirrorCopyMode mode) => mode == MirrorCopyMode.Adaptive ? "adaptive" : mode.ToWireName();
}
