using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;

namespace BlockMirror.Nbd.Server;

/// <summary>What <c>block-export-add type=nbd</c> asks for.</summary>
/// <param name="Id">The export id (QMP's <c>id</c>).</param>
/// <param name="Name">The name clients ask for; defaults to the node name.</param>
/// <param name="Writable">Whether clients may write.</param>
/// <param name="Description">Free text shown by NBD_INFO_DESCRIPTION and in export lists.</param>
/// <param name="Writethrough">Every write and write-zeroes is made durable before its reply (QMP's <c>writethrough</c>).</param>
/// <param name="Bitmaps">
/// Named dirty bitmaps clients may read as <c>qemu:dirty-bitmap:NAME</c> meta contexts (QMP's <c>bitmaps</c>); each is
/// marked busy while exported. The caller has checked them (QEMU's checks and words are the QMP layer's).
/// </param>
/// <param name="AllocationDepth">Clients may read the <c>qemu:allocation-depth</c> context (QMP's <c>allocation-depth</c>).</param>
public sealed record NbdExportOptions(string Id, string? Name = null, bool Writable = false, string? Description = null, bool Writethrough = false,
    IReadOnlyList<DirtyBitmap>? Bitmaps = null, bool AllocationDepth = false);

/// <summary>
/// One export: a root parent of its node, so that requests go through the graph (a running mirror sees
/// and copies every write) and a pivot re-points <see cref="Edge"/> at the new node with no help from here.
/// </summary>
public sealed class NbdExport : IEdgeParent
{
    static long _created;

    internal NbdExport(NbdExportOptions options, string name)
    {
        Order = Interlocked.Increment(ref _created);
        Id = options.Id;
        Name = name;
        Writable = options.Writable;
        Description = options.Description;
        Writethrough = options.Writethrough;
        Bitmaps = options.Bitmaps ?? [];
        AllocationDepth = options.AllocationDepth;
    }

    public string Id { get; }

    /// <summary>Increases with each export made, so exports can be listed newest first, as QEMU lists them.</summary>
    public long Order { get; }

    public string Name { get; }

    public bool Writable { get; }

    public string? Description { get; }

    /// <summary>Writes carry FUA whether or not the client asked for it.</summary>
    public bool Writethrough { get; }

    /// <summary>The bitmaps served as <c>qemu:dirty-bitmap:NAME</c> contexts, in the order given (their context ids follow it).</summary>
    public IReadOnlyList<DirtyBitmap> Bitmaps { get; }

    /// <summary>Whether the export serves <c>qemu:allocation-depth</c>: which layer of the node's chain decides each range.</summary>
    public bool AllocationDepth { get; }

    /// <summary>The edge requests travel; set once the export is attached.</summary>
    public NodeEdge Edge { get; internal set; } = null!;

    public string ParentDescription => $"export '{Id}'";

    /// <summary>What clients asked of the export (requests, bytes, errors), for the metrics.</summary>
    public NbdExportStatistics Statistics { get; } = new();

    /// <summary>Connections currently using the export.</summary>
    internal int Clients;
}
