using System.Text.Json;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>
/// One node's options while its driver reads them: the driver-specific members through
/// <see cref="Options"/>, the members every node has (QEMU's BlockdevOptionsBase) already read.
/// </summary>
public sealed class NodeOptions
{
    readonly BlockGraph _graph;

    internal NodeOptions(BlockGraph graph, OptionReader options, string? nodeName, bool readOnly, FileDiscardMode discard, bool direct, OpenRules rules,
        bool forceShare)
    {
        ForceShare = forceShare;
        _graph = graph;
        Options = options;
        NodeName = nodeName;
        ReadOnly = readOnly;
        Discard = discard;
        Direct = direct;
        Rules = rules;
    }

    /// <summary>The driver's own members; whatever the driver does not read is refused as unexpected.</summary>
    public OptionReader Options { get; }

    public string? NodeName { get; }

    public bool ReadOnly { get; }

    /// <summary><c>discard</c>: unmap (or on) lets discards free space.</summary>
    public FileDiscardMode Discard { get; }

    /// <summary><c>cache.direct</c>.</summary>
    public bool Direct { get; }

    internal OpenRules Rules { get; }

    /// <summary><c>force-share</c>, passed down to inline children.</summary>
    internal bool ForceShare { get; }

    /// <summary>A required child (a BlockdevRef member): a node name or inline options.</summary>
    /// <param name="readOnly">Open an inline child read-only whatever its parent is (a backing file); default: as the parent.</param>
    public ChildPlan Child(string name, bool? readOnly = null)
    {
        switch (Options.OptionalRaw(name))
        {
            case null:
                throw Options.Invalid($"Parameter '{Options.Prefix}{name}' is missing");
            case { ValueKind: JsonValueKind.String } reference:
                // QEMU's words and class (GenericError) for a reference to no node.
                var node = _graph.FindNode(reference.GetString()!)
                    ?? throw Options.Invalid($"Cannot find device='{reference.GetString()}' nor node-name='{reference.GetString()}'");
                return new ChildPlan(node, null);
            case { ValueKind: JsonValueKind.Object }:
                return new ChildPlan(null, DriverRegistry.Read(_graph, Options.OptionalObject(name)!, readOnly ?? ReadOnly, new OpenRules(), ForceShare, inline: true, parentDirect: Direct));
            default:
                throw Options.Invalid($"Invalid parameter type for '{Options.Prefix}{name}', expected: BlockdevRef");
        }
    }
}
