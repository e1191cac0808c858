namespace BlockMirror.Block.Tests.Drivers.PowerLoss;

/// <summary>What one journal entry records.</summary>
enum JournalKind
{
    /// <summary>A data-changing request to the file was issued (<see cref="JournalEntry.Change"/> says what).</summary>
    ChangeIssued,

    /// <summary>That request completed (same <see cref="JournalEntry.Id"/>).</summary>
    ChangeDone,

    /// <summary>A flush of the file was issued.</summary>
    FlushIssued,

    /// <summary>That flush completed: every change done before it was issued is on the disk.</summary>
    FlushDone,

    /// <summary>A guest request to the image was issued.</summary>
    GuestIssued,

    /// <summary>That guest request completed.</summary>
    GuestDone,
}

/// <summary>How a request changes the file's bytes (or its length).</summary>
enum ChangeKind
{
    Write,
    Zero,
    Truncate,
}

/// <summary>A data change: <see cref="Data"/> for a write, a length of zeroes, or the new file length.</summary>
sealed record FileChange(ChangeKind Kind, long Offset, long Length, byte[]? Data, bool Fua);

readonly record struct JournalEntry(JournalKind Kind, int Id, FileChange? Change = null);

/// <summary>
/// The order of events below a format driver and above it, as one list: which file changes were issued and
/// completed, which flushes began and ended, and which guest requests ran. A power loss after any prefix of it
/// leaves a file that <see cref="PowerLossImage"/> builds.
/// </summary>
sealed class PowerLossJournal
{
    readonly Lock _lock = new();
    readonly List<JournalEntry> _entries = [];
    int _nextId;

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _entries.Count;
            }
        }
    }

    public IReadOnlyList<JournalEntry> Snapshot()
    {
        lock (_lock)
        {
            return [.. _entries];
        }
    }

    /// <summary>Records the start of an event and returns the id its end is recorded with.</summary>
    public int Begin(JournalKind kind, FileChange? change = null)
    {
        lock (_lock)
        {
            var id = _nextId++;
            _entries.Add(new JournalEntry(kind, id, change));
            return id;
        }
    }

    public void End(JournalKind kind, int id)
    {
        lock (_lock)
        {
            _entries.Add(new JournalEntry(kind, id));
        }
    }
}
