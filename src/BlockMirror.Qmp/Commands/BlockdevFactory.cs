using System.Text.Json;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Blkdebug;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Null;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// Builds nodes from <c>BlockdevOptions</c> (qapi/block-core.json), for <c>blockdev-add</c> and the daemon's
/// <c>--blockdev</c>. All options are read and checked before the first node is opened; a child given inline
/// becomes an implicit node that goes away with its parent, a child given by name must exist.
/// </summary>
public static class BlockdevFactory
{
    /// <summary>The drivers blockdev-add knows, as QAPI's BlockdevDriver names them.</summary>
    public static readonly string[] Drivers = ["blkdebug", "file", "null-co", "qcow2", "raw"];

    /// <summary>What one node's options say, checked, before anything is opened.</summary>
    abstract record Plan(string? NodeName, bool ReadOnly);

    sealed record FilePlan(string? NodeName, bool ReadOnly, FileDriverOptions Options) : Plan(NodeName, ReadOnly);

    sealed record NullPlan(string? NodeName, bool ReadOnly, NullDriverOptions Options) : Plan(NodeName, ReadOnly);

    sealed record RawPlan(string? NodeName, bool ReadOnly, ChildPlan File, RawDriverOptions Options) : Plan(NodeName, ReadOnly);

    sealed record BlkdebugPlan(string? NodeName, bool ReadOnly, ChildPlan Image, BlkdebugOptions Options) : Plan(NodeName, ReadOnly);

    /// <summary>qcow2: the file child, and the backing child when one is given (null: none; absent: the header's).</summary>
    sealed record Qcow2Plan(string? NodeName, bool ReadOnly, ChildPlan File, ChildPlan? Backing, Qcow2Options Options) : Plan(NodeName, ReadOnly);

    /// <summary>A child: an existing node by name, or inline options for a new implicit one.</summary>
    sealed record ChildPlan(BlockNode? Existing, Plan? Inline);

    /// <summary>Checks the options and opens the node (and its inline children).</summary>
    /// <param name="topLevel">blockdev-add's root node must be named.</param>
    public static async Task<BlockNode> CreateAsync(BlockGraph graph, QmpArguments options, bool topLevel, CancellationToken cancellationToken)
    {
        var plan = Read(graph, options, parentReadOnly: false);
        if (topLevel && plan.NodeName is null)
        {
            throw QmpException.Generic("'node-name' must be specified for the root node");
        }

        return await OpenAsync(graph, plan, cancellationToken).ConfigureAwait(false);
    }

    static Plan Read(BlockGraph graph, QmpArguments options, bool parentReadOnly)
    {
        var driver = options.OptionalEnum("driver", Drivers) ?? throw QmpException.Generic($"Parameter '{options.Prefix}driver' is missing");
        var nodeName = options.OptionalString("node-name");
        if (nodeName is not null)
        {
            if (BlockGraph.ValidateNodeName(nodeName) is { } problem)
            {
                throw QmpException.Generic(problem);
            }

            if (graph.FindNode(nodeName) is not null)
            {
                throw QmpException.Generic($"node-name '{nodeName}' is already in use");
            }
        }

        var readOnly = options.OptionalBool("read-only") ?? parentReadOnly;
        var discard = options.OptionalEnum("discard", "ignore", "off", "unmap", "on") is "unmap" or "on" ? FileDiscardMode.Unmap : FileDiscardMode.Ignore;
        var direct = false;
        if (options.OptionalObject("cache") is { } cache)
        {
            direct = cache.OptionalBool("direct") ?? false;
            cache.Accept("no-flush");
            cache.CheckNoneUnexpected();
        }

        if (options.OptionalEnum("detect-zeroes", "off", "on", "unmap") is "on" or "unmap")
        {
            throw QmpException.Generic("detect-zeroes is not supported; use detect-zeroes=off");
        }

        // Accepted for compatibility with scripts written for QEMU; they change nothing here.
        options.Accept("auto-read-only", "force-share");
        Plan plan = driver switch
        {
            "file" => new FilePlan(nodeName, readOnly, new FileDriverOptions(
                options.RequireString("filename"), direct, options.OptionalEnum("aio", "threads", "native", "io_uring") ?? "threads", discard,
                options.OptionalEnum("locking", "auto", "on", "off") switch
                {
                    "on" => FileLockingMode.On,
                    "off" => FileLockingMode.Off,
                    _ => FileLockingMode.Auto,
                })),
            "null-co" => new NullPlan(nodeName, readOnly, new NullDriverOptions(
                options.OptionalUnsigned("size") ?? NullDriverOptions.DefaultSize, options.OptionalBool("read-zeroes") ?? false,
                options.OptionalUnsigned("latency-ns") ?? 0)),
            "raw" => new RawPlan(nodeName, readOnly, Child(graph, options, "file", readOnly),
                new RawDriverOptions(options.OptionalUnsigned("offset") ?? 0, options.OptionalUnsigned("size"))),
            "blkdebug" => new BlkdebugPlan(nodeName, readOnly, Child(graph, options, "image", readOnly),
                new BlkdebugOptions(Rules(options), (int)(options.OptionalUnsigned("align") ?? 0))),
            "qcow2" => Qcow2(graph, options, nodeName, readOnly, discard, direct),
            _ => throw new InvalidOperationException(driver),
        };
        if (driver == "file")
        {
            options.Accept("drop-cache", "x-check-cache-dropped");
        }

        if (driver == "qcow2")
        {
            // QEMU's tuning knobs: accepted so that scripts run unchanged; this driver sizes its refcount
            // cache itself, writes back on flush, and checks every data write against metadata.
            options.Accept("lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "overlap-check",
                "cache-size", "refcount-cache-size", "cache-clean-interval", "data-file");
        }

        options.CheckNoneUnexpected();
        return plan;
    }

    static ChildPlan Child(BlockGraph graph, QmpArguments options, string name, bool readOnly)
    {
        switch (options.OptionalRaw(name))
        {
            case null:
                throw QmpException.Generic($"Parameter '{options.Prefix}{name}' is missing");
            case { ValueKind: JsonValueKind.String } reference:
                var node = graph.FindNode(reference.GetString()!)
                    ?? throw new QmpException(QmpException.DeviceNotFound, $"Cannot find device='' nor node-name='{reference.GetString()}'");
                return new ChildPlan(node, null);
            case { ValueKind: JsonValueKind.Object }:
                return new ChildPlan(null, Read(graph, options.OptionalObject(name)!, readOnly));
            default:
                throw QmpException.Generic($"Invalid parameter type for '{options.Prefix}{name}', expected: BlockdevRef");
        }
    }

    static Qcow2Plan Qcow2(BlockGraph graph, QmpArguments options, string? nodeName, bool readOnly, FileDiscardMode discard, bool direct)
    {
        if (options.OptionalRaw("data-file") is not null)
        {
            throw QmpException.Generic("qcow2: an external data file ('data-file') is not supported");
        }

        var l2Cache = options.OptionalUnsigned("l2-cache-size");
        if (l2Cache is 0)
        {
            throw QmpException.Generic("l2-cache-size must be positive");
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
            backing = Child(graph, options, "backing", readOnly: true);
            mode = Qcow2BackingMode.Node;
        }

        var qcow2 = new Qcow2Options { L2CacheSize = l2Cache, Discard = discard, Backing = mode, BackingDirect = direct };
        return new Qcow2Plan(nodeName, readOnly, Child(graph, options, "file", readOnly), backing, qcow2);
    }

    /// <summary>blkdebug's <c>inject-error</c> list: event (read_aio, write_aio, flush_to_disk...), errno, sector, once, immediately.</summary>
    static List<BlkdebugRule>? Rules(QmpArguments options)
    {
        if (options.OptionalRaw("inject-error") is not { } list)
        {
            return null;
        }

        if (list.ValueKind != JsonValueKind.Array)
        {
            throw QmpException.Generic($"Invalid parameter type for '{options.Prefix}inject-error', expected: array");
        }

        var rules = new List<BlkdebugRule>();
        var index = 0;
        foreach (var item in list.EnumerateArray())
        {
            var rule = options.Nested(item, $"{options.Prefix}inject-error[{index++}].");
            var operation = rule.OptionalString("event") switch
            {
                null => throw QmpException.Generic($"Parameter '{options.Prefix}inject-error[{index - 1}].event' is missing"),
                "read_aio" => BlockOperation.Read,
                "write_aio" => BlockOperation.Write,
                "flush_to_disk" => BlockOperation.Flush,
                "pwrite_zeroes" => BlockOperation.WriteZeroes,
                "pdiscard" => BlockOperation.Discard,
                var other => throw QmpException.Generic($"Parameter '{options.Prefix}inject-error[{index - 1}].event' does not accept value '{other}'"),
            };
            var errno = (BlockErrno)(rule.OptionalInt("errno") ?? (long)BlockErrno.EIO);
            var sector = rule.OptionalInt("sector");
            var once = rule.OptionalBool("once") ?? false;
            rule.Accept("state", "iotype", "immediately");
            rule.CheckNoneUnexpected();
            rules.Add(new BlkdebugRule(operation, sector is { } s and >= 0 ? s * 512 : 0, sector is >= 0 ? 512 : null, errno, 0, once));
        }

        return rules;
    }

    static async Task<BlockNode> OpenAsync(BlockGraph graph, Plan plan, CancellationToken cancellationToken)
    {
        switch (plan)
        {
            case FilePlan file:
                return await FileDriver.OpenAsync(graph, file.NodeName, file.Options, file.ReadOnly, cancellationToken).ConfigureAwait(false);
            case NullPlan nul:
                return await NullDriver.OpenAsync(graph, nul.NodeName, nul.Options, nul.ReadOnly, cancellationToken).ConfigureAwait(false);
            case RawPlan raw:
            {
                var child = await OpenChildAsync(graph, raw.File, cancellationToken).ConfigureAwait(false);
                return await WithChildAsync(graph, raw.File, child,
                    () => RawDriver.OpenAsync(graph, raw.NodeName, child, raw.Options, raw.ReadOnly, cancellationToken)).ConfigureAwait(false);
            }

            case BlkdebugPlan debug:
            {
                var child = await OpenChildAsync(graph, debug.Image, cancellationToken).ConfigureAwait(false);
                return await WithChildAsync(graph, debug.Image, child,
                    () => BlkdebugFilter.OpenAsync(graph, debug.NodeName, child, debug.Options, debug.ReadOnly, cancellationToken)).ConfigureAwait(false);
            }

            case Qcow2Plan qcow2:
            {
                var file = await OpenChildAsync(graph, qcow2.File, cancellationToken).ConfigureAwait(false);
                return await WithChildAsync(graph, qcow2.File, file, async () =>
                {
                    var options = qcow2.Options;
                    if (qcow2.Backing is { } backingPlan)
                    {
                        var backing = await OpenChildAsync(graph, backingPlan, cancellationToken).ConfigureAwait(false);
                        return await WithChildAsync(graph, backingPlan, backing,
                            () => Qcow2Driver.OpenAsync(graph, qcow2.NodeName, file, options with { BackingNode = backing }, qcow2.ReadOnly, cancellationToken)).ConfigureAwait(false);
                    }

                    return await Qcow2Driver.OpenAsync(graph, qcow2.NodeName, file, options, qcow2.ReadOnly, cancellationToken).ConfigureAwait(false);
                }).ConfigureAwait(false);
            }

            default:
                throw new InvalidOperationException(plan.GetType().Name);
        }
    }

    static async Task<BlockNode> OpenChildAsync(BlockGraph graph, ChildPlan child, CancellationToken cancellationToken) =>
        child.Existing ?? await OpenAsync(graph, child.Inline!, cancellationToken).ConfigureAwait(false);

    /// <summary>Opens a parent over a child; an inline child is closed again when the parent fails to open.</summary>
    static async Task<BlockNode> WithChildAsync(BlockGraph graph, ChildPlan plan, BlockNode child, Func<ValueTask<BlockNode>> open)
    {
        try
        {
            return await open().ConfigureAwait(false);
        }
        catch when (plan.Inline is not null)
        {
            await graph.RemoveNodeAsync(child).ConfigureAwait(false);
            throw;
        }
    }
}
