namespace BlockMirror.Block.Graph;

/// <summary>Why a graph operation was refused. Nothing in the graph changed when this is thrown.</summary>
public enum GraphErrorKind
{
    /// <summary>A malformed or conflicting request (QMP GenericError).</summary>
    Invalid,

    /// <summary>A named node does not exist (QMP DeviceNotFound).</summary>
    NotFound,

    /// <summary>The node is used by something that forbids the change.</summary>
    InUse,
}

/// <summary>A refused graph change: bad node name, duplicate name, node in use, would-be cycle.</summary>
public sealed class BlockGraphException(GraphErrorKind kind, string message) : InvalidOperationException(message)
{
    public GraphErrorKind Kind { get; } = kind;

    /// <summary>A second line for people, as QEMU's error hints (not part of the QMP error text), or null.</summary>
    public string? Hint { get; init; }
}
