using BlockMirror.Nbd.Server;

namespace BlockMirror.Nbd.Tests;

/// <summary>The start-up warm-up of <c>blockmirror serve</c>: it finishes in its time and leaves nothing behind.</summary>
public sealed class NbdWarmupTests
{
    [Fact]
    public async Task The_warmup_ends_within_its_budget_and_removes_its_files()
    {
        // A root of its own: a daemon started by another test (or another run) on this machine warms up in
        // the shared temporary directory at the same time.
        using var root = new BlockMirror.TestKit.TempDirectory("blockmirror-warmup-test-");
        var clock = System.Diagnostics.Stopwatch.StartNew();

        await NbdWarmup.RunAsync(root.Path, CancellationToken.None);

        // One round may start just before the budget runs out; on a busy machine allow it plenty.
        Assert.True(clock.Elapsed < NbdWarmup.MaxDuration * 10, $"took {clock.Elapsed}");
        Assert.Empty(Directory.GetFileSystemEntries(root.Path));
    }
}
