using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Drivers.Null;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// The drivers this build has, and the one way to open a node from options (QEMU's BlockdevOptions): QMP's
/// blockdev-add, the daemon's <c>--blockdev</c>, images opened by file name (<see cref="ImageFiles"/>) and
/// the backing files a qcow2 header names all come here, so they accept and refuse the same options with
/// the same words. The list is explicit (no reflection: the daemon is compiled ahead of time).
/// </summary>
public static class DriverRegistry
{
    /// <summary>
    /// The drivers of the block layer itself, in the order messages list them (the formats: raw, then qcow2).
    /// Drivers declared by an assembly above it (the NBD client) join through <see cref="Add"/>.
    /// </summary>
    static readonly DriverDeclaration[] BlockLayerDrivers =
    [
        FileDeclaration.Driver,
        RawDeclaration.Driver,
        Qcow2Declaration.Driver,
        NullDeclaration.Driver,
        BlkdebugDeclaration.Driver,
        MemoryDeclaration.Driver,
    ];

    static Snapshot _current = new(BlockLayerDrivers);

    /// <summary>Every driver this process has.</summary>
    public static IReadOnlyList<DriverDeclaration> All => _current.All;

    /// <summary>The drivers blockdev-add offers, as QAPI names them.</summary>
    public static IReadOnlyList<string> Offered => _current.OfferedNames;

    /// <summary>blockdev-add's variants: each offered driver's own members.</summary>
    internal static IReadOnlyList<Qapi.QapiVariant> Variants => _current.Variants;

    /// <summary>The formats an image file can be opened as (raw, qcow2).</summary>
    public static IReadOnlyList<string> Formats => _current.Formats;

    /// <summary>
    /// Adds a driver declared outside the block layer. The block layer cannot name it (the NBD client lives
    /// in the NBD assembly, beside the server it shares its wire code with), so whoever composes the program
    /// adds it at start-up, before the first node opens. Adding the same declaration again changes nothing;
    /// a different driver under a taken name is a bug.
    /// </summary>
    public static void Add(DriverDeclaration driver)
    {
        while (true)
        {
            var current = Volatile.Read(ref _current);
            if (current.All.Contains(driver))
            {
                return;
            }

            if (current.All.Any(d => d.Name == driver.Name))
            {
                throw new InvalidOperationException($"a driver named '{driver.Name}' is already registered");
            }

            if (Interlocked.CompareExchange(ref _current, new Snapshot([.. current.All, driver]), current) == current)
            {
                return;
            }
        }
    }

    /// <summary>One immutable view of the list, so readers never see it half-changed.</summary>
    sealed class Snapshot(DriverDeclaration[] all)
    {
        public DriverDeclaration[] All { get; } = all;

        public string[] AllNames { get; } = [.. all.Select(d => d.Name)];

        public string[] OfferedNames { get; } = [.. all.Where(d => d.Offered).Select(d => d.Name)];

        public string[] Formats { get; } = [.. all.Where(d => d.Kind == DriverKind.Format).Select(d => d.Name)];

        public Qapi.QapiVariant[] Variants { get; } = [.. all.Where(d => d.Offered).Select(d => new Qapi.QapiVariant(d.Name, d.Options))];
    }

    public static DriverDeclaration? Find(string name) => Array.Find(_current.All, d => d.Name == name);

    /// <summary>
    /// The protocol prefix of an image's file name, QEMU's way (path_has_protocol): what comes before a ':'
    /// that comes before any '/' (<c>nbd</c> in <c>nbd://h/x</c>, <c>file</c> in <c>file:disk.img</c>; none in
    /// <c>./a:b</c> or <c>/a:b</c>). Null for a plain file name.
    /// </summary>
    public static string? ProtocolPrefix(string fileName)
    {
        var end = fileName.AsSpan().IndexOfAny(':', '/');
        return end >= 0 && fileName[end] == ':' ? fileName[..end] : null;
    }

    /// <summary>
    /// The protocol driver an image's file name names (QEMU's bdrv_find_protocol), for the places QEMU reads
    /// a protocol prefix: an image opened by name, a drive-mirror target, a backing file name. The driver
    /// that claims the <see cref="ProtocolPrefix"/>, or a refusal in QEMU's words when none does
    /// (<c>Unknown protocol 'nbds'</c>); null for a plain file name, which the <c>file</c> driver opens.
    /// </summary>
    /// <exception cref="BlockOpenException">The prefix is one no driver claims.</exception>
    public static DriverDeclaration? FindProtocol(string fileName)
    {
        if (ProtocolPrefix(fileName) is not { } prefix)
        {
            return null;
        }

        return Array.Find(_current.All, d => d.ParseFileName is not null && d.Protocols.Contains(prefix))
            // QEMU keeps 127 bytes of the prefix for its message.
            ?? throw new BlockOpenException($"Unknown protocol '{(prefix.Length > 127 ? prefix[..127] : prefix)}'");
    }

    /// <summary>Checks the options and opens the node (and its inline children).</summary>
    public static async ValueTask<BlockNode> OpenAsync(BlockGraph graph, OptionReader options, OpenRules rules, CancellationToken cancellationToken = default)
    {
        var plan = Read(graph, options, parentReadOnly: false, rules);
        return await OpenAsync(graph, plan, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads one node's options, and its inline children's, checking all of them; opens nothing.</summary>
    /// <param name="parentForceShare">An inline child shares everything when its parent does (QEMU passes <c>force-share</c> down).</param>
    /// <param name="parentDirect">
    /// The parent's <c>cache.direct</c>: an inline child that does not set its own takes it, as QEMU's
    /// bdrv_inherited_options copies it down, so <c>driver=qcow2,file.driver=file,...,cache.direct=on</c> opens the
    /// file with O_DIRECT.
    /// </param>
    /// <param name="inline">
    /// The node is a child given inline in its parent's options: its <c>discard</c> defaults to unmap, as QEMU's
    /// bdrv_inherited_options sets it, since the parent decides which discards and unmapping zeroes it passes on.
    /// </param>
    internal static NodePlan Read(BlockGraph graph, OptionReader options, bool parentReadOnly, OpenRules rules, bool parentForceShare = false, bool inline = false,
        bool parentDirect = false)
    {
        var name = options.OptionalEnum("driver", rules.InternalDrivers ? _current.AllNames : _current.OfferedNames)
            ?? throw options.Invalid($"Parameter '{options.Prefix}driver' is missing");
        var driver = Find(name)!;
        var nodeName = options.OptionalString("node-name");
        if (rules.NameRequired && nodeName is null)
        {
            throw options.Invalid("'node-name' must be specified for the root node");
        }

        var readOnly = options.OptionalBool("read-only") ?? parentReadOnly;
        var discard = options.OptionalEnum("discard", "ignore", "off", "unmap", "on") switch
        {
            "unmap" or "on" => FileDiscardMode.Unmap,
            null when inline => FileDiscardMode.Unmap,
            _ => FileDiscardMode.Ignore,
        };

        // QEMU's order: the root's name required, then detect-zeroes, then the name's form and uniqueness.
        var detectZeroes = options.OptionalEnum("detect-zeroes", "off", "on", "unmap") switch
        {
            "on" => DetectZeroesMode.On,
            "unmap" => DetectZeroesMode.Unmap,
            _ => DetectZeroesMode.Off,
        };
        if (detectZeroes == DetectZeroesMode.Unmap && discard != FileDiscardMode.Unmap)
        {
            throw options.Invalid("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
        }

        if (nodeName is not null)
        {
            if (BlockGraph.ValidateNodeName(nodeName) is { } problem)
            {
                throw options.Invalid(problem);
            }

            if (graph.FindNode(nodeName) is not null)
            {
                throw options.Invalid($"Duplicate nodes with node-name='{nodeName}'");
            }
        }

        var direct = inline && parentDirect;
        if (options.OptionalObject("cache") is { } cache)
        {
            direct = cache.OptionalBool("direct") ?? direct;
            cache.Accept("no-flush");
            cache.CheckNoneUnexpected();
        }

        // force-share (qemu-img -U): the node lets any other user in, and takes no lock that keeps one out.
        var forceShare = options.OptionalBool("force-share") ?? parentForceShare;
        if (forceShare && !readOnly)
        {
            throw options.Invalid("force-share=on can only be used with read-only images");
        }

        // Accepted for compatibility with scripts written for QEMU; it changes nothing here.
        options.Accept("auto-read-only");
        var open = driver.Read(new NodeOptions(graph, options, nodeName, readOnly, discard, direct, rules, forceShare));
        options.CheckNoneUnexpected();
        return new NodePlan(driver, nodeName, readOnly, Unmapping(forceShare ? SharingAll(open) : open, discard == FileDiscardMode.Unmap, detectZeroes, direct));
    }

    /// <summary>
    /// Tells the node whether its discards are passed on (QEMU's BDRV_O_UNMAP), what it does with zero writes and
    /// whether it was opened with <c>cache.direct</c>, as soon as it exists.
    /// </summary>
    static NodeOpener Unmapping(NodeOpener open, bool unmap, DetectZeroesMode detectZeroes, bool direct) => async opening =>
    {
        var node = await open(opening).ConfigureAwait(false);
        node.DiscardUnmaps = unmap;
        node.DropsDiscards = !unmap;
        node.DetectZeroes = detectZeroes;
        node.Direct = direct;
        return node;
    };

    /// <summary>
    /// Marks the node force-share as soon as it exists, before a parent attaches it: its parents' edges are
    /// checked (and its locks taken) at that attach.
    /// </summary>
    static NodeOpener SharingAll(NodeOpener open) => async opening =>
    {
        var node = await open(opening).ConfigureAwait(false);
        node.ForceShare = true;
        return node;
    };

    internal static async ValueTask<BlockNode> OpenAsync(BlockGraph graph, NodePlan plan, CancellationToken cancellationToken)
    {
        var opening = new NodeOpening(graph, cancellationToken);
        try
        {
            return await plan.Open(opening).ConfigureAwait(false);
        }
        catch
        {
            await opening.CloseInlineChildrenAsync().ConfigureAwait(false);
            throw;
        }
    }
}
