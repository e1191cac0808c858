using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>Where a qcow2 node's backing file comes from (blockdev-add's <c>backing</c> option).</summary>
public enum Qcow2BackingMode
{
    /// <summary>Open the file the image header names, relative to the image's directory (option absent).</summary>
    FromHeader,

    /// <summary>No backing file, whatever the header says (<c>"backing": null</c>): unallocated clusters read as zeroes.</summary>
    None,

    /// <summary>An existing node (<c>"backing": "node-name"</c>).</summary>
    Node,
}

/// <summary>Options of the <c>qcow2</c> format driver, with QEMU's names where QEMU has them.</summary>
public sealed record Qcow2Options
{
    /// <summary>QEMU's limit on the default L2 cache (DEFAULT_L2_CACHE_MAX_SIZE).</summary>
    public const long DefaultL2CacheLimit = 32L << 20;

    /// <summary><c>l2-cache-size</c> in bytes; null: enough to map the whole disk, at most 32 MiB (QEMU's default).</summary>
    public long? L2CacheSize { get; init; }

    /// <summary>The node's <c>discard</c> option: <c>unmap</c> frees discarded clusters and punches them out of the file.</summary>
    public FileDiscardMode Discard { get; init; } = FileDiscardMode.Ignore;

    public Qcow2BackingMode Backing { get; init; } = Qcow2BackingMode.FromHeader;

    /// <summary>With <see cref="Qcow2BackingMode.Node"/>: the backing node.</summary>
    public BlockNode? BackingNode { get; init; }

    /// <summary>Open backing files named by the header with O_DIRECT (the overlay's <c>cache.direct</c>).</summary>
    public bool BackingDirect { get; init; }

    /// <summary>The images above this one while a chain is being opened, to refuse a backing file loop.</summary>
    internal IReadOnlyList<string> Chain { get; init; } = [];
}
