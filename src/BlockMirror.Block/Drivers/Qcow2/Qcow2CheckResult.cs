namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>What <c>-r</c> may repair (qemu-img check's option).</summary>
public enum Qcow2RepairMode
{
    None,

    /// <summary>Lower refcounts that are higher than the references (leaked clusters).</summary>
    Leaks,

    /// <summary>Leaks, refcounts lower than the references (rebuilding the refcount structure if need be), and copied flags.</summary>
    All,
}

/// <summary>The findings of a check, in the fields of qemu-img check's report (<c>--output=json</c>).</summary>
public sealed record Qcow2CheckResult
{
    /// <summary>Inconsistencies that can lose data: refcounts below the references, bad pointers, wrong copied flags.</summary>
    public long Corruptions { get; init; }

    /// <summary>Clusters whose refcount is above their references: wasted space, no harm to data.</summary>
    public long Leaks { get; init; }

    /// <summary>Parts of the image the check could not read or make sense of.</summary>
    public long CheckErrors { get; init; }

    public long CorruptionsFixed { get; init; }

    public long LeaksFixed { get; init; }

    /// <summary>End of the last cluster something refers to.</summary>
    public long ImageEndOffset { get; init; }

    /// <summary>Guest clusters of the virtual disk.</summary>
    public long TotalClusters { get; init; }

    /// <summary>Guest clusters with a host cluster (data, preallocated zeroes or compressed).</summary>
    public long AllocatedClusters { get; init; }

    /// <summary>Allocated guest clusters not directly after the previous one in the file.</summary>
    public long FragmentedClusters { get; init; }

    public long CompressedClusters { get; init; }

    /// <summary>
    /// The check could not complete (qemu-img: "Check failed"): a repair was asked for that needs the refcount
    /// structure rebuilt, which only <see cref="Qcow2RepairMode.All"/> does. Nothing was written.
    /// </summary>
    public bool Failed { get; init; }

    /// <summary>What opening the image found worth a warning (qemu-img's "warning:" lines before the findings).</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];

    /// <summary>One line per finding, worded as qemu-img check words them ("Leaked cluster 5 refcount=1 reference=0").</summary>
    public IReadOnlyList<string> Messages { get; init; } = [];
}
