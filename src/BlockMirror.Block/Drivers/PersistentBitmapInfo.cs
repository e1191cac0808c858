namespace BlockMirror.Block.Drivers;

/// <summary>
/// A persistent dirty bitmap as the image stores it (QAPI's Qcow2BitmapInfo): its name, bytes per bit, and
/// its flags. <see cref="InUse"/>: it was not stored cleanly (or is open for writing now) and may be stale;
/// <see cref="Auto"/>: it is enabled, recording every write.
/// </summary>
public sealed record PersistentBitmapInfo(string Name, long Granularity, bool InUse, bool Auto);
