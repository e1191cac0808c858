using BlockMirror.Block.Drivers.Registry;

namespace BlockMirror.Block.Drivers;

/// <summary>How a backing file name recorded in an image is found on disk.</summary>
public static class BackingPaths
{
    /// <summary>
    /// QEMU's path_combine: a relative backing file name is relative to the directory part of the overlay's
    /// name <em>as it was given</em>, with nothing normalised ("top.qcow2" backed by "base.qcow2" gives
    /// "base.qcow2"; "/images/dir/../top.qcow2" backed by "../base.qcow2" gives "/images/dir/../../base.qcow2").
    /// The result is the backing node's file name, which QEMU shows (query-named-block-nodes, qemu-img info)
    /// and writes into an overlay's header when a commit drops the layers between.
    /// </summary>
    /// <remarks>
    /// A backing name with a protocol prefix (<c>nbd://h/base</c>) is taken as it is, and one relative to an
    /// image of another protocol than files (an NBD export) has no directory to be relative to: refused in
    /// QEMU's words (bdrv_make_absolute_filename, bdrv_dirname).
    /// </remarks>
    /// <exception cref="BlockOpenException">A relative name in an image that is not a file.</exception>
    public static string Resolve(string image, string backing)
    {
        if (backing.StartsWith('/') || DriverRegistry.ProtocolPrefix(backing) is not null)
        {
            return backing;
        }

        if (ImageFiles.LocalFile(image) is null)
        {
            var protocol = DriverRegistry.FindProtocol(image)?.Name;
            throw new BlockOpenException(protocol == DriverNames.Nbd
                ? "Cannot generate a base directory for NBD nodes"
                : $"Cannot generate a base directory for {protocol} nodes");
        }

        var slash = image.LastIndexOf('/');
        return slash < 0 ? backing : image[..(slash + 1)] + backing;
    }
}
