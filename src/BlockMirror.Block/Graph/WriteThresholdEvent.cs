namespace BlockMirror.Block.Graph;

/// <summary>A write reached beyond a node's threshold (QMP's BLOCK_WRITE_THRESHOLD event).</summary>
/// <param name="NodeName">The node the threshold was set on.</param>
/// <param name="AmountExceeded">How many bytes past the threshold the request's end lies.</param>
/// <param name="Threshold">The threshold that was passed (now off).</param>
public readonly record struct WriteThresholdEvent(string NodeName, ulong AmountExceeded, ulong Threshold);
