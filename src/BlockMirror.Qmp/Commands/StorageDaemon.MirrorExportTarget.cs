using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>drive-mirror onto an image that is not a local file: an NBD export named by its URI.</summary>
public sealed partial class StorageDaemon
{
    /// <summary>
    /// Opens an export target. With <c>mode=existing</c> it is opened as it is (its format given or probed
    /// through it). With <c>absolute-paths</c> QEMU 7.2 "creates" the image on the export, which it cannot
    /// create, grow or remove (block.c's create fallback for such protocols): it opens it, refuses one smaller
    /// than the new image ("Cannot grow NBD nodes"), then a raw image clears its first 512 bytes and a qcow2
    /// image writes a new, empty qcow2 over its start. Here likewise, with two differences that keep data:
    /// every refusal comes before the first write (QEMU has written a qcow2 header when it finds the export too
    /// small for the refcount table), and a raw export of another size than the source is left as it is, as
    /// the job then fails at once on the sizes (QEMU clears its first sector first).
    /// </summary>
    async Task<BlockNode> OpenExportTargetAsync(DriveMirrorTarget plan, ImageOpenOptions open, BlockNode source, CancellationToken cancellationToken)
    {
        BlockNode export;
        try
        {
            export = await ImageFiles.OpenProtocolAsync(Graph, open, cancellationToken).ConfigureAwait(false);
        }
        catch (BlockOpenException ex) when (plan.Create)
        {
            throw QmpException.Generic($"Protocol driver '{DriverRegistry.FindProtocol(plan.Path)!.Name}' does not support image creation, " +
                $"and opening the image failed: {ex.Message}");
        }

        try
        {
            if (plan.Create)
            {
                await CreateOnExportAsync(export, plan, source.Length, cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            await Graph.RemoveNodeAsync(export).ConfigureAwait(false);
            throw;
        }

        var node = await ImageFiles.OpenOverAsync(Graph, open, export, cancellationToken).ConfigureAwait(false);
        await WarnIfProbedRawAsync(plan, node).ConfigureAwait(false);
        return node;
    }

    /// <summary>Makes the start of <paramref name="export"/> a new image of the plan's format and <paramref name="size"/>, as QEMU does.</summary>
    static async Task CreateOnExportAsync(BlockNode export, DriveMirrorTarget plan, long size, CancellationToken cancellationToken)
    {
        var grow = $"Cannot grow {export.Driver.DriverName.ToUpperInvariant()} nodes";
        if (plan.Format == DriverNames.Qcow2)
        {
            byte[] image;
            try
            {
                image = Qcow2Create.Image(new Qcow2CreateOptions { Size = size, BackingFile = plan.BackingFile, BackingFormat = plan.BackingFormat });
            }
            catch (BlockOpenException ex)
            {
                throw QmpException.Generic(ex.Message);
            }

            // QEMU writes the header cluster, then the refcount table and block, and fails at the first that
            // does not fit (EINVAL past an export's end).
            var clusterSize = new Qcow2CreateOptions { Size = size }.ClusterSize;
            if (image.Length > export.Length)
            {
                throw QmpException.Generic(export.Length < clusterSize
                    ? "Could not write qcow2 header: Invalid argument"
                    : "Could not write refcount table: Invalid argument");
            }

            await export.WriteAsync(0, image, RequestFlags.None, cancellationToken).ConfigureAwait(false);
            return;
        }

        if (export.Length < size)
        {
            throw QmpException.Generic(grow);
        }

        if (export.Length == size)
        {
            await export.WriteZeroesAsync(0, Math.Min(size, 512), RequestFlags.MayUnmap, cancellationToken).ConfigureAwait(false);
        }
    }
}
