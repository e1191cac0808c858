using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers.Registry;

/// <summary>Opens one node from its checked options; children are opened through <see cref="NodeOpening.OpenChildAsync"/>.</summary>
public delegate ValueTask<BlockNode> NodeOpener(NodeOpening opening);

/// <summary>What one node's options say, checked, before anything is opened.</summary>
/// <param name="Driver">The driver's declaration.</param>
/// <param name="NodeName">The node's name, or null for a generated one.</param>
/// <param name="Open">Opens the node (the driver's part of its declaration, with its options bound).</param>
public sealed record NodePlan(DriverDeclaration Driver, string? NodeName, bool ReadOnly, NodeOpener Open);

/// <summary>A child (QAPI's BlockdevRef): an existing node by name, or inline options for a new implicit node.</summary>
public sealed record ChildPlan(BlockNode? Existing, NodePlan? Inline);
