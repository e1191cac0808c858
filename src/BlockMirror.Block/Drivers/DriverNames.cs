namespace BlockMirror.Block.Drivers;

/// <summary>
/// Driver names as QEMU spells them (QAPI's BlockdevDriver), for code outside the block layer that needs to
/// name a format (a mirror target's format, qemu-img's <c>-f</c>) without knowing the driver's type.
/// </summary>
public static class DriverNames
{
    public const string File = "file";
    public const string Raw = "raw";
    public const string Qcow2 = "qcow2";
    public const string NullCo = "null-co";
    public const string Blkdebug = "blkdebug";

    /// <summary>The NBD client: an export of an NBD server as a protocol node.</summary>
    public const string Nbd = "nbd";

    /// <summary>RAM-backed nodes for tests and warm-up runs; not a QEMU driver, so blockdev-add does not offer it.</summary>
    public const string Memory = "memory";
}
