namespace BlockMirror.Nbd.Server;

/// <summary>
/// The metadata contexts one NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT chose on one export:
/// <c>base:allocation</c>, and when the export serves them <c>qemu:allocation-depth</c> and its
/// <c>qemu:dirty-bitmap:NAME</c> contexts. Context ids are QEMU's, so a trace of either server reads the same: 0 for
/// base:allocation, 1 for qemu:allocation-depth, 2 + i for the export's i-th bitmap.
/// </summary>
sealed class NbdMetaContexts
{
    public const uint BaseAllocationId = 0;

    public const uint AllocationDepthId = 1;

    /// <summary>The id of the export's first bitmap; the others follow in the export's order.</summary>
    public const uint FirstBitmapId = 2;

    public const string BaseAllocationName = "base:allocation";

    public const string AllocationDepthName = "qemu:allocation-depth";

    /// <summary>A bitmap's context is this and the bitmap's name.</summary>
    public const string BitmapPrefix = "qemu:dirty-bitmap:";

    readonly bool[] _bitmaps;

    public NbdMetaContexts(NbdExport export)
    {
        Export = export;
        _bitmaps = new bool[export.Bitmaps.Count];
    }

    public NbdExport Export { get; }

    public bool BaseAllocation { get; private set; }

    public bool AllocationDepth { get; private set; }

    /// <summary>Whether the export's i-th bitmap is chosen.</summary>
    public bool IsBitmapSelected(int index) => _bitmaps[index];

    /// <summary>How many contexts are chosen: the chunks a block status reply has.</summary>
    public int Count => (BaseAllocation ? 1 : 0) + (AllocationDepth ? 1 : 0) + _bitmaps.Count(b => b);

    /// <summary>An NBD_OPT_LIST_META_CONTEXT without queries: every context the export has.</summary>
    public void SelectAll()
    {
        BaseAllocation = true;
        AllocationDepth = Export.AllocationDepth;
        Array.Fill(_bitmaps, true);
    }

    /// <summary>
    /// Applies one query, as QEMU's server reads it. An exact name chooses its context. A listing may also ask
    /// for a whole namespace or part of one: <c>base:</c>, <c>qemu:</c>, <c>qemu:dirty-bitmap:</c>; a SET takes
    /// those as names and so chooses nothing. A query that names nothing the export has is ignored (the
    /// protocol's rule: no error, no context).
    /// </summary>
    public void Apply(string query, bool list)
    {
        if (query.StartsWith("base:", StringComparison.Ordinal))
        {
            BaseAllocation |= query == BaseAllocationName || list && query.Length == "base:".Length;
            return;
        }

        if (list && query is "qemu:" or BitmapPrefix)
        {
            AllocationDepth |= query == "qemu:" && Export.AllocationDepth;
            Array.Fill(_bitmaps, true);
            return;
        }

        if (query == AllocationDepthName)
        {
            AllocationDepth |= Export.AllocationDepth;
            return;
        }

        if (query.StartsWith(BitmapPrefix, StringComparison.Ordinal))
        {
            var name = query.AsSpan(BitmapPrefix.Length);
            for (var i = 0; i < _bitmaps.Length; i++)
            {
                if (name.SequenceEqual(Export.Bitmaps[i].Name.AsSpan()))
                {
                    _bitmaps[i] = true;
                    return;
                }
            }
        }
    }

    /// <summary>The chosen contexts with their ids, in QEMU's order (base:allocation, the depth, then the bitmaps).</summary>
    public IEnumerable<(string Name, uint Id)> Selected()
    {
        if (BaseAllocation)
        {
            yield return (BaseAllocationName, BaseAllocationId);
        }

        if (AllocationDepth)
        {
            yield return (AllocationDepthName, AllocationDepthId);
        }

        for (var i = 0; i < _bitmaps.Length; i++)
        {
            if (_bitmaps[i])
            {
                yield return (BitmapPrefix + Export.Bitmaps[i].Name, FirstBitmapId + (uint)i);
            }
        }
    }
}
