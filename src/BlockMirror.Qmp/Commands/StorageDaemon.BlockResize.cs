using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Block.Qapi;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// block_resize (QEMU 7.2's qmp_block_resize): changes a node's virtual size, as a user of the node that takes
/// the resize permission, inside a drained section. Its checks and words follow QEMU's, in QEMU's order.
/// </summary>
public sealed partial class StorageDaemon
{
    /// <summary>QEMU's BDRV_MAX_LENGTH: the largest offset a request may reach (INT64_MAX rounded down to 1 GiB).</summary>
    const long MaxRequestOffset = long.MaxValue & ~((1L << 30) - 1);

    static readonly QapiObject BlockResizeArguments = new("q_obj_block_resize-arg",
        ("*device", QapiBuiltin.Str), ("*node-name", QapiBuiltin.Str), ("size", QapiBuiltin.Int));

    void AddBlockResizeCommand()
    {
        Commands.Add("block_resize", BlockResizeArguments, async (arguments, cancellationToken) =>
        {
            var device = arguments.OptionalString("device");
            var nodeName = arguments.OptionalString("node-name");
            var size = arguments.RequireInt("size");
            arguments.CheckNoneUnexpected();

            // A device names a BlockBackend, which qemu-storage-daemon has none of: only node-name finds a node.
            var node = (nodeName is null ? null : Graph.FindNode(nodeName))
                ?? throw QmpException.Generic($"Cannot find device='{device}' nor node-name='{nodeName}'");
            if (size < 0)
            {
                throw QmpException.Generic("Parameter 'size' expects a >0 size");
            }

            if (Jobs.IsUsedByBlockJob(node))
            {
                // QEMU's QERR_DEVICE_IN_USE with the device argument, printed "(null)" when absent.
                throw QmpException.Generic($"Device '{device ?? "(null)"}' is in use");
            }

            // Refused with QEMU's "Permission conflict" when another user does not share the resize.
            var edge = Graph.AttachRoot(node, new RootParent("block_resize"), "root", BlockPermissions.Resize, BlockPermissions.All);
            try
            {
                using var drained = await Graph.DrainAsync(node, cancellationToken).ConfigureAwait(false);
                if (size > MaxRequestOffset)
                {
                    throw QmpException.Generic($"offset({size}) exceeds maximum({MaxRequestOffset})");
                }

                if (node.ReadOnly)
                {
                    throw QmpException.Generic("Image is read-only");
                }

                try
                {
                    await node.TruncateAsync(size, cancellationToken).ConfigureAwait(false);
                }
                catch (BlockIOException ex) when (ex.Detail is { } detail)
                {
                    // QEMU's drivers say what is wrong without naming the node or the request.
                    throw QmpException.Generic(detail);
                }
            }
            finally
            {
                await Graph.DetachRootAsync(edge).ConfigureAwait(false);
            }

            return Empty;
        });
    }
}
