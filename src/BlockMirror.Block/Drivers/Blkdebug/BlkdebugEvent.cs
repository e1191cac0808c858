namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>
/// The points in a request's life a driver announces to the node below it (QEMU's BlkdebugEvent, QAPI order).
/// Only blkdebug listens; its rules are armed and its state changes when one fires. Not every event has a
/// place in our drivers (vmstate, compressed writes, L1 growth...): those are accepted in rules and never raised.
/// </summary>
public enum BlkdebugEvent
{
    L1Update,
    L1GrowAllocTable,
    L1GrowWriteTable,
    L1GrowActivateTable,
    L2Load,
    L2Update,
    L2UpdateCompressed,
    L2AllocCowRead,
    L2AllocWrite,
    ReadAio,
    ReadBackingAio,
    ReadCompressed,
    WriteAio,
    WriteCompressed,
    VmstateLoad,
    VmstateSave,
    CowRead,
    CowWrite,
    ReftableLoad,
    ReftableGrow,
    ReftableUpdate,
    RefblockLoad,
    RefblockUpdate,
    RefblockUpdatePart,
    RefblockAlloc,
    RefblockAllocHookup,
    RefblockAllocWrite,
    RefblockAllocWriteBlocks,
    RefblockAllocWriteTable,
    RefblockAllocSwitchTable,
    ClusterAlloc,
    ClusterAllocBytes,
    ClusterFree,
    FlushToOs,
    FlushToDisk,
    PwritevRmwHead,
    PwritevRmwAfterHead,
    PwritevRmwTail,
    PwritevRmwAfterTail,
    Pwritev,
    PwritevZero,
    PwritevDone,
    EmptyImagePrepare,
    L1ShrinkWriteTable,
    L1ShrinkFreeL2Clusters,
    CorWrite,
    ClusterAllocSpace,
    None,
}

/// <summary>QAPI spellings of <see cref="BlkdebugEvent"/>.</summary>
public static class BlkdebugEventNames
{
    static readonly string[] Names =
    [
        "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
        "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
        "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
        "vmstate_load", "vmstate_save", "cow_read", "cow_write",
        "reftable_load", "reftable_grow", "reftable_update",
        "refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
        "refblock_alloc_write", "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
        "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
        "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
        "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
        "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
    ];

    /// <summary>How many events there are (the size of a per-event table).</summary>
    public static int Count => Names.Length;

    /// <summary>Every event's name, in QAPI's BlkdebugEvent order.</summary>
    public static IReadOnlyList<string> All => Names;

    public static string ToWireName(this BlkdebugEvent e) => Names[(int)e];

    public static bool TryParse(string name, out BlkdebugEvent e)
    {
        var index = Array.IndexOf(Names, name);
        e = (BlkdebugEvent)Math.Max(index, 0);
        return index >= 0;
    }
}

/// <summary>A driver that listens to the events its parents raise on it (QEMU's bdrv_debug_event).</summary>
public interface IBlkdebugEventSink
{
    /// <summary>Called synchronously at the point the event names; must not block or allocate.</summary>
    void OnEvent(BlkdebugEvent e);
}
