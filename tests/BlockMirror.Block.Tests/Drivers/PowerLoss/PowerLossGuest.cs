using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Drivers.PowerLoss;

/// <summary>
/// A guest for the power-loss tests: random writes, zero writes, discards and flushes, one to three at once on clusters
/// none of the others touches, each issued and completed into the journal; and which of their bytes a power loss
/// may not take.
/// </summary>
sealed class PowerLossGuest(byte[] initial, int clusterSize)
{
    readonly long _size = initial.Length;
    readonly Dictionary<int, GuestRequest> _requests = [];

    public async Task RunStepAsync(NodeEdge disk, PowerLossJournal journal, Random random)
    {
        if (random.Next(8) == 0)
        {
            await RunAsync(disk, journal, new GuestRequest(GuestKind.Flush, 0, 0, null));
            return;
        }

        // One to three requests at once, on clusters no other of them touches.
        List<GuestRequest> batch = [];
        for (var tries = 0; batch.Count < 1 + random.Next(3) && tries < 10; tries++)
        {
            var request = Pick(random);
            if (!batch.Any(o => o.ClusterStart(clusterSize) < request.ClusterEnd(clusterSize) && request.ClusterStart(clusterSize) < o.ClusterEnd(clusterSize)))
            {
                batch.Add(request);
            }
        }

        await Task.WhenAll(batch.Select(r => RunAsync(disk, journal, r)));
    }

    GuestRequest Pick(Random random)
    {
        var length = 1 + random.Next((int)Math.Min(_size, clusterSize * 6L));
        var offset = (long)random.Next((int)(_size - length + 1));
        offset -= offset % 512;
        length = (int)Math.Max(512, length - length % 512);
        var kind = random.Next(10) switch
        {
            < 6 => GuestKind.Write,
            < 8 => GuestKind.Zero,
            _ => GuestKind.Discard,
        };
        byte[]? data = null;
        if (kind == GuestKind.Write)
        {
            data = new byte[length];
            random.NextBytes(data);
        }

        // A write or zero write with FUA is durable once it completes, flush or not.
        return new GuestRequest(kind, offset, length, data, MayUnmap: random.Next(2) == 0, Fua: kind != GuestKind.Discard && random.Next(4) == 0);
    }

    async Task RunAsync(NodeEdge disk, PowerLossJournal journal, GuestRequest request)
    {
        var id = journal.Begin(JournalKind.GuestIssued);
        lock (_requests)
        {
            _requests[id] = request;
        }

        await Task.Yield();
        switch (request.Kind)
        {
            case GuestKind.Write:
                await disk.WriteAsync(request.Offset, request.Data, request.Fua ? RequestFlags.Fua : RequestFlags.None);
                break;
            case GuestKind.Zero:
                await disk.WriteZeroesAsync(request.Offset, request.Length,
                    (request.MayUnmap ? RequestFlags.MayUnmap : RequestFlags.None) | (request.Fua ? RequestFlags.Fua : RequestFlags.None));
                break;
            case GuestKind.Discard:
                await disk.DiscardAsync(request.Offset, request.Length);
                break;
            case GuestKind.Flush:
                await disk.FlushAsync();
                break;
        }

        journal.End(JournalKind.GuestDone, id);
    }

    /// <summary>
    /// The guest's bytes that must survive a power loss after the first <paramref name="cut"/> entries: those of
    /// requests completed before the last completed flush was issued, and of completed requests with FUA. Bytes that
    /// a request not covered by either may have touched (its whole clusters), and discarded bytes, are not known.
    /// </summary>
    public (byte[] Bytes, bool[] Known) DurableAt(IReadOnlyList<JournalEntry> entries, int cut)
    {
        var issuedAt = new Dictionary<int, int>();
        var done = new List<(int Index, int Id)>();
        var coveredBefore = 0;
        for (var i = 0; i < cut; i++)
        {
            var e = entries[i];
            if (e.Kind == JournalKind.GuestIssued)
            {
                issuedAt[e.Id] = i;
            }
            else if (e.Kind == JournalKind.GuestDone)
            {
                done.Add((i, e.Id));
                if (_requests[e.Id].Kind == GuestKind.Flush)
                {
                    coveredBefore = Math.Max(coveredBefore, issuedAt[e.Id]);
                }
            }
        }

        var bytes = initial.ToArray();
        var known = new bool[_size];
        Array.Fill(known, true);
        var durable = new HashSet<int>();
        foreach (var (index, id) in done.Where(d => d.Index < coveredBefore || _requests[d.Id].Fua))
        {
            durable.Add(id);
            var r = _requests[id];
            switch (r.Kind)
            {
                case GuestKind.Write:
                    r.Data.CopyTo(bytes.AsSpan((int)r.Offset));
                    known.AsSpan((int)r.Offset, r.Length).Fill(true);
                    break;
                case GuestKind.Zero:
                    bytes.AsSpan((int)r.Offset, r.Length).Clear();
                    known.AsSpan((int)r.Offset, r.Length).Fill(true);
                    break;
                case GuestKind.Discard:
                    known.AsSpan((int)r.Offset, r.Length).Clear();
                    break;
            }
        }

        foreach (var (id, _) in issuedAt.Where(kv => !durable.Contains(kv.Key)))
        {
            var r = _requests[id];
            if (r.Kind != GuestKind.Flush)
            {
                var start = r.ClusterStart(clusterSize);
                known.AsSpan((int)start, (int)(Math.Min(_size, r.ClusterEnd(clusterSize)) - start)).Clear();
            }
        }

        return (bytes, known);
    }

    /// <summary>The requests that touched byte <paramref name="b"/>, for a failure message.</summary>
    public string Describe(long b)
    {
        lock (_requests)
        {
            var touching = _requests.Where(kv => kv.Value.Kind != GuestKind.Flush && kv.Value.Offset <= b && b < kv.Value.Offset + kv.Value.Length)
                .Select(kv => $"#{kv.Key} {kv.Value.Kind}{(kv.Value.Fua ? " FUA" : "")} {kv.Value.Offset}+{kv.Value.Length}");
            return "requests over it: " + string.Join(", ", touching);
        }
    }
}

enum GuestKind
{
    Write,
    Zero,
    Discard,
    Flush,
}

sealed record GuestRequest(GuestKind Kind, long Offset, int Length, byte[]? Data, bool MayUnmap = false, bool Fua = false)
{
    public long ClusterStart(int clusterSize) => Offset / clusterSize * clusterSize;

    public long ClusterEnd(int clusterSize) => (Offset + Length + clusterSize - 1) / clusterSize * clusterSize;
}
