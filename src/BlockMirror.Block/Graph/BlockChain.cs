using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// Queries over a backing chain: from a top node down through filters and backing nodes to a base
/// (exclusive) or the bottom. These decide what a mirror copies.
/// </summary>
public static class BlockChain
{
    /// <summary>The nodes from <paramref name="top"/> down to, not including, <paramref name="base"/>.</summary>
    public static IEnumerable<BlockNode> Layers(BlockNode top, BlockNode? @base = null)
    {
        for (var node = top; node is not null && !ReferenceEquals(node, @base); node = node.ChainChild)
        {
            yield return node;
        }
    }

    /// <summary>The first node at or below <paramref name="node"/> that is not a filter (QEMU's bdrv_skip_filters).</summary>
    public static BlockNode SkipFilters(BlockNode node)
    {
        while (node.FilteredChild is { } child)
        {
            node = child.Node;
        }

        return node;
    }

    /// <summary>True when <paramref name="candidate"/> is <paramref name="top"/> or lies below it in its chain.</summary>
    public static bool Contains(BlockNode top, BlockNode candidate) =>
        Layers(top).Any(n => ReferenceEquals(n, candidate));

    /// <summary>
    /// The image of the chain whose file <paramref name="name"/> names (QEMU's bdrv_find_backing_image, for
    /// block-commit's <c>top</c>/<c>base</c> and <c>qemu-img commit -b</c>): the name as given, a relative
    /// name read from the directory of the image above (as a header's backing name is read) or from the
    /// current directory, or another link to the same file. Filters are passed over.
    /// </summary>
    public static BlockNode? FindImage(BlockNode top, string name, bool includeTop)
    {
        string? above = null;
        foreach (var node in Layers(top))
        {
            if (node.Driver.Kind == Drivers.DriverKind.Filter || node.Driver.FileName is not { } file)
            {
                continue;
            }

            if (includeTop || !ReferenceEquals(node, top))
            {
                var besideAbove = above is null || Path.IsPathRooted(name) ? null : Path.GetFullPath(Path.Combine(Path.GetDirectoryName(above) ?? ".", name));
                var full = Path.GetFullPath(file);
                if (file == name || full == besideAbove || full == Path.GetFullPath(name) || Interop.FileStatus.AreSame(file, name) == true)
                {
                    return node;
                }
            }

            above = Path.GetFullPath(file);
        }

        return null;
    }

    /// <summary>
    /// Whether any layer from <paramref name="top"/> down to, not including, <paramref name="base"/> decides
    /// the content at <paramref name="offset"/>, and for how many bytes that answer holds (at most
    /// <paramref name="length"/>). QEMU's bdrv_is_allocated_above.
    /// </summary>
    public static async ValueTask<(bool Allocated, long Length)> IsAllocatedAboveAsync(BlockNode top, BlockNode? @base, long offset, long length, CancellationToken cancellationToken = default)
    {
        var run = length;
        // A plain walk rather than Layers(): these run once per mirror operation, and an iterator allocates.
        for (var layer = top; layer is not null && !ReferenceEquals(layer, @base); layer = layer.ChainChild)
        {
            if (offset >= layer.Length)
            {
                // A layer shorter than the top reads zeroes here, decided by the layer above: nothing
                // below can be allocated at this offset.
                break;
            }

            var status = await layer.GetBlockStatusAsync(offset, run, cancellationToken).ConfigureAwait(false);
            if (status.IsAllocated)
            {
                return (true, status.Length);
            }

            run = Math.Min(run, status.Length);
        }

        return (false, run);
    }

    /// <summary>
    /// Which layer of the chain from <paramref name="top"/> decides the content at <paramref name="offset"/>, counted
    /// from 1 at the top (0: none, it reads as the chain's bottom leaves it), and for how many bytes that answer holds
    /// (at most <paramref name="length"/>): QEMU's bdrv_is_allocated_above's depth, which NBD's
    /// <c>qemu:allocation-depth</c> reports. As QEMU counts it, the zeroes past the end of a layer shorter than the one
    /// above it belong to that layer.
    /// </summary>
    public static async ValueTask<(int Depth, long Length)> AllocationDepthAsync(BlockNode top, long offset, long length, CancellationToken cancellationToken = default)
    {
        var run = length;
        var depth = 1;
        for (var layer = top; layer is not null; layer = layer.ChainChild, depth++)
        {
            if (offset >= layer.Length)
            {
                return (depth, run);
            }

            var status = await layer.GetBlockStatusAsync(offset, run, cancellationToken).ConfigureAwait(false);
            if (status.IsAllocated)
            {
                return (depth, status.Length);
            }

            run = Math.Min(run, status.Length);
        }

        return (0, run);
    }

    /// <summary>
    /// What a read of the chain returns from <paramref name="offset"/>: the first layer above
    /// <paramref name="base"/> that decides the content answers Data and/or Zero (with Allocated). When no
    /// layer does, the answer is unallocated (it falls to <paramref name="base"/>), and also Zero when
    /// there is no base. QEMU's bdrv_block_status_above.
    /// </summary>
    public static async ValueTask<BlockStatus> GetBlockStatusAboveAsync(BlockNode top, BlockNode? @base, long offset, long length, CancellationToken cancellationToken = default)
    {
        var run = length;
        var zeroBelow = @base is null;
        // A plain walk rather than Layers(): these run once per mirror operation, and an iterator allocates.
        for (var layer = top; layer is not null && !ReferenceEquals(layer, @base); layer = layer.ChainChild)
        {
            if (offset >= layer.Length)
            {
                // Past the end of a shorter layer the chain reads zeroes.
                return new BlockStatus(BlockStatusFlags.Zero | BlockStatusFlags.Allocated, run);
            }

            var status = await layer.GetBlockStatusAsync(offset, run, cancellationToken).ConfigureAwait(false);
            if (status.IsAllocated)
            {
                return status;
            }

            if (status.IsZero && layer.ChainChild is null)
            {
                // The bottom of the chain has no backing: it reads zeroes without deciding them itself.
                return new BlockStatus(BlockStatusFlags.Zero, status.Length);
            }

            run = Math.Min(run, status.Length);
        }

        return new BlockStatus(zeroBelow ? BlockStatusFlags.Zero : BlockStatusFlags.None, run);
    }
}
