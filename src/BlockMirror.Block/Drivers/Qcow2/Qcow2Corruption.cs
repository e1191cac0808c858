namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// Metadata found inconsistent while serving a request (an unaligned data offset, a refcount that would
/// drop below zero, data about to overwrite metadata). The driver turns it into an EIO for the request
/// and marks the image corrupt.
/// </summary>
internal sealed class Qcow2Corruption(string problem) : Exception(problem)
{
    public string Problem { get; } = problem;
}
