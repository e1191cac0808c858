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
        Skip.IfNot(node.Capabilities.CanDiscard, $"the file system under {Path.GetTempPath()} cannot punch holes");
    }
}
