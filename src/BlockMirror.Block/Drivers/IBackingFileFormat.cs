using BlockMirror.Block.Graph;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// A format whose own metadata names a backing file (qcow2): what commit, mirror and <c>qemu-img commit</c>
/// need from it, so that they ask the node's driver for the capability instead of for a concrete type.
/// The name itself is <see cref="IBlockDriver.BackingFileName"/>.
/// </summary>
public interface IBackingFileFormat
{
    /// <summary>The backing file's format as the metadata records it, or null when it records none.</summary>
    string? BackingFormat { get; }

    /// <summary>Writes another backing file name (and format) into the metadata, or removes it (null).</summary>
    ValueTask ChangeBackingFileAsync(string? name, string? format, CancellationToken cancellationToken = default);

    /// <summary>Opens the backing file the metadata names, if no backing node is attached yet; returns the backing node.</summary>
    ValueTask<BlockNode?> OpenBackingFileAsync(BlockGraph graph, CancellationToken cancellationToken = default);

    /// <summary>Drops all data of this layer, so it reads through to its backing file everywhere (QEMU's bdrv_make_empty).</summary>
    ValueTask MakeEmptyAsync(CancellationToken cancellationToken = default);
}
