namespace BlockMirror.Block.Tests.Drivers.PowerLoss;

/// <summary>Where a run's power losses fall in its journal.</summary>
static class PowerLossCuts
{
    /// <summary>
    /// The <paramref name="i"/>th cut of a run: the first after everything (nothing lost); then, taking turns, one
    /// just before a flush completes (where the most changes are in the air) and one anywhere, or inside
    /// <paramref name="focus"/> (a span of entries a test wants cut more often) for the second and fourth.
    /// </summary>
    public static int Pick(IReadOnlyList<JournalEntry> entries, int i, Random random, (int Start, int End) focus = default)
    {
        var beforeFlushDone = entries.Select((e, index) => (e, index)).Where(x => x.e.Kind == JournalKind.FlushDone).Select(x => x.index).ToArray();
        return i == 0 ? entries.Count
            : i % 2 == 1 && beforeFlushDone.Length > 0 ? beforeFlushDone[random.Next(beforeFlushDone.Length)]
            : i is 2 or 4 && focus.End > focus.Start ? random.Next(focus.Start, focus.End + 1)
            : random.Next(entries.Count + 1);
    }
}
