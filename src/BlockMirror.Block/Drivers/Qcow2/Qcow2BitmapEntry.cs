namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// One entry of the bitmap directory (docs/interop/qcow2.txt, "Bitmap directory"), decoded: where the bitmap's
/// table is, how many entries it has, its flags and granularity, and its name. Entries with extra data are
/// refused when the directory is read (as QEMU refuses them), so none is kept here.
/// </summary>
internal sealed record Qcow2BitmapEntry(string Name, long TableOffset, int TableSize, uint Flags, int GranularityBits)
{
    /// <summary>The bitmap was not stored cleanly: its data may be stale (QEMU's BME_FLAG_IN_USE).</summary>
    public const uint FlagInUse = 1u << 0;

    /// <summary>The bitmap is enabled: every write to the disk must be recorded in it (BME_FLAG_AUTO).</summary>
    public const uint FlagAuto = 1u << 1;

    public bool InUse => (Flags & FlagInUse) != 0;

    public bool Auto => (Flags & FlagAuto) != 0;

    public long Granularity => 1L << GranularityBits;

    /// <summary>What <c>info</c> reports of it.</summary>
    public PersistentBitmapInfo ToInfo() => new(Name, Granularity, InUse, Auto);
}
