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
    public static string Resolve(string image, string backing)
    {
        if (backing.StartsWith('/'))
        {
            return backing;
        }

        var slash = image.LastIndexOf('/');
        return slash < 0 ? backing : image[..(slash + 1)] + backing;
    }
}
