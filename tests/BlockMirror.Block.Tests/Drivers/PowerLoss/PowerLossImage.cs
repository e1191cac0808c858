namespace BlockMirror.Block.Tests.Drivers.PowerLoss;

/// <summary>
/// What a disk with a volatile write cache may hold after a power loss: every change that completed before a
/// completed flush was issued (or that was written with FUA) is there; of the others, issued before the power
/// went, any may be there, wholly, not at all, or in part (whole 512-byte sectors, the unit a disk writes
/// atomically), whatever their order.
/// </summary>
static class PowerLossImage
{
    const int Sector = 512;

    /// <summary>Builds the file as the disk holds it after the first <paramref name="cut"/> journal entries.</summary>
    public static byte[] Build(byte[] initial, IReadOnlyList<JournalEntry> entries, int cut, Random random)
    {
        var flushIssuedAt = new Dictionary<int, int>();
        var doneAt = new Dictionary<int, int>();
        var coveredBefore = 0;
        var extent = (long)initial.Length;
        for (var i = 0; i < cut; i++)
        {
            var e = entries[i];
            switch (e.Kind)
            {
                case JournalKind.FlushIssued:
                    flushIssuedAt[e.Id] = i;
                    break;
                case JournalKind.FlushDone:
                    coveredBefore = Math.Max(coveredBefore, flushIssuedAt[e.Id]);
                    break;
                case JournalKind.ChangeDone:
                    doneAt[e.Id] = i;
                    break;
                case JournalKind.ChangeIssued:
                    extent = Math.Max(extent, e.Change!.Kind == ChangeKind.Truncate ? e.Change.Length : e.Change.Offset + e.Change.Length);
                    break;
            }
        }

        var bytes = new byte[extent];
        initial.CopyTo(bytes, 0);
        var length = (long)initial.Length;
        for (var i = 0; i < cut; i++)
        {
            var e = entries[i];
            if (e.Kind != JournalKind.ChangeIssued)
            {
                continue;
            }

            var change = e.Change!;
            var durable = doneAt.TryGetValue(e.Id, out var done) && (done < coveredBefore || change.Fua);
            var fate = durable ? Fate.Whole : (Fate)random.Next(3);
            if (change.Kind == ChangeKind.Truncate)
            {
                if (fate != Fate.None)
                {
                    if (change.Length < length)
                    {
                        bytes.AsSpan((int)change.Length, (int)(length - change.Length)).Clear();
                    }

                    length = change.Length;
                }

                continue;
            }

            var end = change.Offset + change.Length;
            for (var start = change.Offset; start < end;)
            {
                var next = Math.Min(end, (start / Sector + 1) * Sector);
                if (fate == Fate.Whole || (fate == Fate.Torn && random.Next(2) == 0))
                {
                    var target = bytes.AsSpan((int)start, (int)(next - start));
                    if (change.Data is { } data)
                    {
                        data.AsSpan((int)(start - change.Offset), target.Length).CopyTo(target);
                    }
                    else
                    {
                        target.Clear();
                    }

                    length = Math.Max(length, next);
                }

                start = next;
            }
        }

        return bytes.AsSpan(0, (int)length).ToArray();
    }

    enum Fate
    {
        None,
        Whole,
        Torn,
    }
}
