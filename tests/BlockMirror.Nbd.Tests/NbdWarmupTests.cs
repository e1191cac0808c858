using BlockMirror.Nbd.Server;

namespace BlockMirror.Nbd.Tests;

/// <summary>The start-up warm-up of <c>blockmirror serve</c>: it finishes in its time and leaves nothing behind.</summary>
public sealed class NbdWarmupTests
{
    [Fact]
    public async Task The_warmup_ends_within_its_budget_and_removes_its_files()
    {
        var before = Directory.GetDirectories(Path.GetTempPath(), "blockmirror-warmup-*").ToHashSet();
        var clock = System.Diagnostics.Stopwatch.StartNew();

        await NbdWarmup.RunAsync();

        // One round may start just before the budget runs out; on a busy machine allow it plenty.
        Assert.True(clock.Elapsed < NbdWarmup.MaxDuration * 10, $"took {clock.Elapsed}");
        Assert.DoesNotContain(Directory.GetDirectories(Path.GetTempPath(), "blockmirror-warmup-*"), d => !before.Contains(d));
    }
}
