using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>The <c>qcow2</c> format's declaration (QEMU's BlockdevOptionsQcow2).</summary>
static class Qcow2Declaration
{
    static readonly QapiBuiltin Bool = QapiBuiltin.Bool, Int = QapiBuiltin.Int;

    static readonly QapiEnum OverlapCheckMode = new("Qcow2OverlapCheckMode", ["none", "constant", "cached", "all"]);

    /// <summary>Accepted and not acted on: this driver checks every data write against the metadata.</summary>
    static readonly QapiAlternate OverlapChecks = new("Qcow2OverlapChecks",
        new QapiObject("Qcow2OverlapCheckFlags", ("*template", OverlapCheckMode), ("*main-header", Bool), ("*active-l1", Bool), ("*active-l2", Bool),
            ("*refcount-table", Bool), ("*refcount-block", Bool), ("*snapshot-table", Bool), ("*inactive-l1", Bool), ("*inactive-l2", Bool),
            ("*bitmap-directory", Bool)),
        OverlapCheckMode);

    /// <summary>BlockdevOptionsQcow2 without l2-cache-entry-size and encrypt (refused as unexpected); data-file is read to be refused by name.</summary>
    public static DriverDeclaration Driver { get; } = new(DriverNames.Qcow2, DriverKind.Format, Read)
    {
        Options = new QapiObject("BlockdevOptionsQcow2",
            ("file", BlockdevSchema.Ref), ("*backing", BlockdevSchema.RefOrNull), ("*lazy-refcounts", Bool), ("*pass-discard-request", Bool),
            ("*pass-discard-snapshot", Bool), ("*pass-discard-other", Bool), ("*overlap-check", OverlapChecks), ("*cache-size", Int),
            ("*l2-cache-size", Int), ("*refcount-cache-size", Int), ("*cache-clean-interval", Int), ("*data-file", BlockdevSchema.Ref)),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var options = node.Options;
        if (options.OptionalRaw("data-file") is not null)
        {
            throw options.Invalid("qcow2: an external data file ('data-file') is not supported");
        }

        var l2Cache = options.OptionalOptsSize("l2-cache-size");
        _ = options.OptionalOptsSize("cache-size");
        _ = options.OptionalOptsSize("refcount-cache-size");
        if (l2Cache is 0)
        {
            throw options.Invalid("l2-cache-size must be positive");
        }

        ChildPlan? backing = null;
        var mode = Qcow2BackingMode.FromHeader;
        if (options.IsExplicitNull("backing"))
        {
            mode = Qcow2BackingMode.None;
        }
        else if (options.OptionalRaw("backing") is not null)
        {
            // A backing image is never written through its overlay: open it read-only.
            backing = node.Child("backing", readOnly: true);
            mode = Qcow2BackingMode.Node;
        }

        var file = node.Child("file");
        // QEMU's tuning knobs: accepted so that scripts run unchanged; this driver sizes its refcount
        // cache itself, writes back on flush, and checks every data write against metadata.
        options.Accept("lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "overlap-check",
            "cache-size", "refcount-cache-size", "cache-clean-interval");
        // Backing files the header names are opened with the overlay's cache.direct.
        var qcow2 = new Qcow2Options
        {
            L2CacheSize = l2Cache, Discard = node.Discard, Backing = mode, BackingDirect = node.Direct, Chain = node.Rules.Chain,
        };
        return async opening =>
        {
            var fileNode = await opening.OpenChildAsync(file).ConfigureAwait(false);
            var withBacking = backing is null ? qcow2 : qcow2 with { BackingNode = await opening.OpenChildAsync(backing).ConfigureAwait(false) };
            return await Qcow2Driver.OpenAsync(opening.Graph, node.NodeName, fileNode, withBacking, node.ReadOnly, opening.CancellationToken).ConfigureAwait(false);
        };
    }
}
