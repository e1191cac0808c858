using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>Skips a test that needs holes (punched, or reported by SEEK_HOLE) where the temp file system has none.</summary>
/// <remarks>
/// Call it before <see cref="Seeds.RunAsync"/>: that wraps every exception with the seed, which would
/// turn a skip into a failure.
/// </remarks>
static class PunchHoleSupport
{
    public static async Task SkipUnlessAvailableAsync()
    {
        using var dir = new TempDirectory();
        var path = dir.File("probe.raw");
        FileDriver.CreateFile(path, 1 << 16);
        await using var graph = new BlockGraph();
        var node = await FileDriver.OpenAsync(graph, "probe", new FileDriverOptions(path, Discard: FileDiscardMode.Unmap));
        if (!node.Capabilities.CanDiscard)
        {
            // Locally a file system without holes is a reason to skip; in CI it is a broken setup.
            var reason = $"the file system under {Path.GetTempPath()} cannot punch holes";
            if (ExternalTool.IsCi)
            {
                throw new InvalidOperationException($"{reason}; CI=true, so hole-dependent tests must not skip");
            }

            Skip.If(true, reason);
        }
    }
}
