using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// Base for filters: one filtered child, every request passed on unchanged. A filter overrides only
/// what it observes or changes (nbdkit's <c>next-&gt;pread</c>, QEMU's <c>is_filter</c>).
/// </summary>
public abstract class FilterDriver(NodeEdge child) : IBlockDriver, IReopenableDriver
{
    /// <summary>The filtered child; requests go here.</summary>
    protected NodeEdge Child { get; } = child;

    public abstract string DriverName { get; }

    public DriverKind Kind => DriverKind.Filter;

    public virtual DriverCapabilities Capabilities => Child.Node.Capabilities;

    public virtual BlockLimits Limits => Child.Node.Limits;

    public virtual long Length => Child.Node.Length;

    public string? FilteredChildName => Child.Name;

    public string? FileName => Child.Node.Driver.FileName;

    public virtual ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        Child.ReadAsync(offset, buffer, cancellationToken);

    public virtual ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken) =>
        Child.ReadVectorAsync(offset, buffers, cancellationToken);

    public virtual ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken) =>
        Child.WriteAsync(offset, buffer, flags, cancellationToken);

    public virtual ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken) =>
        Child.WriteVectorAsync(offset, buffers, flags, cancellationToken);

    public virtual ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken) =>
        Child.WriteZeroesAsync(offset, length, flags, cancellationToken);

    public virtual ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken) =>
        Child.DiscardAsync(offset, length, cancellationToken);

    public virtual ValueTask FlushAsync(CancellationToken cancellationToken) =>
        Child.FlushAsync(cancellationToken);

    public virtual ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken) =>
        Child.GetBlockStatusAsync(offset, length, cancellationToken);

    public virtual ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        Child.TruncateAsync(length, cancellationToken);

    /// <summary>A filter owns no storage; closing it closes nothing. Its child is released by the graph.</summary>
    public virtual ValueTask DisposeAsync()
    {
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }

    /// <summary>A filter keeps no state that depends on the mode: its child is reopened with it.</summary>
    public virtual ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
