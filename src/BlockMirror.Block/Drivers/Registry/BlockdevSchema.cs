using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// blockdev-add's arguments as QAPI declares them (qapi/block-core.json, QEMU 7.2): BlockdevOptions, a union on
/// <c>driver</c> whose variants are the offered drivers' own declarations (<see cref="DriverDeclaration.Options"/>),
/// and the references a driver makes to its children. What a driver declares here is what it reads.
/// </summary>
public static class BlockdevSchema
{
    /// <summary>BlockdevCacheOptions.</summary>
    static readonly QapiObject Cache = new("BlockdevCacheOptions", ("*direct", QapiBuiltin.Bool), ("*no-flush", QapiBuiltin.Bool));

    /// <summary>BlockdevDriver: the drivers blockdev-add offers (blockdev-create's <c>driver</c> and <c>backing-fmt</c> too).</summary>
    public static QapiEnum Driver { get; } = new("BlockdevDriver", () => DriverRegistry.Offered);

    /// <summary>BlockdevOptions: the members every node has, then the driver's.</summary>
    public static QapiObject Options { get; } = QapiObject.Union("BlockdevOptions",
    [
        ("driver", Driver),
        ("*node-name", QapiBuiltin.Str),
        // QEMU's BlockdevDiscardOptions is ignore|unmap; its older spellings off|on are taken too.
        ("*discard", new QapiEnum("BlockdevDiscardOptions", ["ignore", "off", "unmap", "on"])),
        ("*cache", Cache),
        ("*read-only", QapiBuiltin.Bool),
        ("*auto-read-only", QapiBuiltin.Bool),
        ("*force-share", QapiBuiltin.Bool),
        ("*detect-zeroes", new QapiEnum("BlockdevDetectZeroesOptions", ["off", "on", "unmap"])),
    ], "driver", () => DriverRegistry.Variants);

    /// <summary>BlockdevRef: a child given inline (its options) or by node name.</summary>
    public static QapiAlternate Ref { get; } = new("BlockdevRef", Options, QapiBuiltin.Str);

    /// <summary>BlockdevRefOrNull: a backing child, or null for none.</summary>
    public static QapiAlternate RefOrNull { get; } = new("BlockdevRefOrNull", Options, QapiBuiltin.Str, QapiBuiltin.Null);
}
