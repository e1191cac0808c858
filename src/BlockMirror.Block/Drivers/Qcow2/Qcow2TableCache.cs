using System.Runtime.CompilerServices;
using System.Buffers.Binary;
using BlockMirror.Block.Buffers;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>One cached metadata cluster (an L2 table or a refcount block), big-endian as on disk.</summary>
internal sealed class Qcow2Table(int size, int alignment) : IDisposable
{
    readonly AlignedMemory _memory = new(size, alignment);

    /// <summary>Host offset of the cluster this slot holds; -1 when empty.</summary>
    public long Offset { get; set; } = -1;

    /// <summary>Changed in memory and not yet written back.</summary>
    public bool Dirty { get; set; }

    internal long LastUse { get; set; }

    public Memory<byte> Memory => _memory.Memory;

    public Span<byte> Span => _memory.GetSpan();

    public ulong ReadUInt64(int index) => BinaryPrimitives.ReadUInt64BigEndian(Span[(index * 8)..]);

    public void WriteUInt64(int index, ulong value) => BinaryPrimitives.WriteUInt64BigEndian(Span[(index * 8)..], value);

    public void Dispose() => ((IDisposable)_memory).Dispose();
}

/// <summary>Reads and writes the clusters a <see cref="Qcow2TableCache"/> holds, keeping metadata write order.</summary>
internal interface IQcow2TableStore
{
    ValueTask LoadAsync(Qcow2TableCache cache, Qcow2Table table, CancellationToken cancellationToken);

    /// <summary>Writes dirty tables of <paramref name="cache"/> back, after whatever they depend on.</summary>
    ValueTask StoreAsync(Qcow2TableCache cache, IReadOnlyList<Qcow2Table> tables, CancellationToken cancellationToken);
}

/// <summary>
/// A write-back cache of metadata clusters (QEMU's Qcow2Cache): a fixed number of cluster-sized slots,
/// least recently used out first. Used only under the image's metadata lock. A dirty slot is written back
/// through the store before it is reused, so the store can first write what the table depends on
/// (refcounts before the L2 tables that point at the clusters they count).
/// </summary>
/// <remarks>
/// Callers must not hold a <see cref="Qcow2Table"/> across another <see cref="GetAsync"/> on the same cache:
/// that call may reuse the slot. Slots are allocated on first use, so a small image never pays for a
/// large <c>l2-cache-size</c>.
/// </remarks>
internal sealed class Qcow2TableCache(IQcow2TableStore store, string name, int capacity, int tableSize, int alignment) : IDisposable
{
    readonly List<Qcow2Table> _slots = [];
    readonly Dictionary<long, Qcow2Table> _byOffset = [];
    long _clock;

    public string Name { get; } = name;

    public int Capacity { get; } = Math.Max(2, capacity);

    /// <summary>True when some slot holds changes not yet written.</summary>
    public bool HasDirty
    {
        get
        {
            foreach (var slot in _slots)
            {
                if (slot.Dirty)
                {
                    return true;
                }
            }

            return false;
        }
    }

    /// <summary>
    /// The table at <paramref name="offset"/>: from the cache, else read from the image
    /// (<paramref name="load"/>) or zero-filled for a cluster that is being made a new table.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<Qcow2Table> GetAsync(long offset, bool load, CancellationToken cancellationToken)
    {
        if (_byOffset.TryGetValue(offset, out var cached))
        {
            cached.LastUse = ++_clock;
            if (!load)
            {
                cached.Span.Clear();
            }

            return cached;
        }

        Qcow2Table slot;
        if (_slots.Count < Capacity)
        {
            slot = new Qcow2Table(tableSize, alignment);
            _slots.Add(slot);
        }
        else
        {
            slot = _slots[0];
            foreach (var candidate in _slots)
            {
                if (candidate.LastUse < slot.LastUse)
                {
                    slot = candidate;
                }
            }

            if (slot.Dirty)
            {
                await store.StoreAsync(this, [slot], cancellationToken).ConfigureAwait(false);
            }

            _byOffset.Remove(slot.Offset);
            slot.Offset = -1;
        }

        if (load)
        {
            try
            {
                slot.Offset = offset;
                await store.LoadAsync(this, slot, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                slot.Offset = -1;
                slot.LastUse = 0;
                throw;
            }
        }
        else
        {
            slot.Span.Clear();
            slot.Offset = offset;
        }

        slot.Dirty = false;
        slot.LastUse = ++_clock;
        _byOffset[offset] = slot;
        return slot;
    }

    /// <summary>The dirty slots, in host offset order (sequential writes where tables are adjacent).</summary>
    public List<Qcow2Table> DirtyTables()
    {
        var dirty = _slots.Where(s => s.Dirty).ToList();
        dirty.Sort((a, b) => a.Offset.CompareTo(b.Offset));
        return dirty;
    }

    /// <summary>Drops a cluster that is no longer a table of this kind (freed, or moved); unsaved changes are lost.</summary>
    public void Forget(long offset)
    {
        if (_byOffset.Remove(offset, out var slot))
        {
            slot.Offset = -1;
            slot.Dirty = false;
            slot.LastUse = 0;
        }
    }

    public void Dispose()
    {
        foreach (var slot in _slots)
        {
            slot.Dispose();
        }

        _slots.Clear();
        _byOffset.Clear();
    }
}
