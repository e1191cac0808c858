using System.Numerics;
using System.Text;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

// The actions a transaction runs (QEMU 7.2's blockdev.c BlkActionOps): each checks and applies its change in
// PrepareAsync, keeping what AbortAsync needs to undo it; CommitAsync makes it final. A command of the same name is
// the action run alone.
public sealed partial class StorageDaemon
{
    /// <summary>QEMU's BDRV_BITMAP_MAX_NAME_SIZE: the longest bitmap name, in bytes.</summary>
    const int MaxBitmapNameBytes = 1023;

    /// <summary>One action of a transaction (QEMU's BlkActionState).</summary>
    abstract class TransactionAction
    {
        /// <summary>The action's QMP name (TransactionActionKind).</summary>
        public string Kind { get; set; } = "";

        /// <summary>The transaction asked for completion-mode=grouped, which no bitmap action supports (as in QEMU 7.2).</summary>
        public bool Grouped { get; set; }

        /// <summary>The commit writes an image and so can fail; the transaction commits these first.</summary>
        public virtual bool CommitWritesImage => false;

        /// <summary>Checks the action and applies it, keeping what an abort needs; throws the refusal.</summary>
        public abstract ValueTask PrepareAsync(CancellationToken cancellationToken);

        public virtual ValueTask CommitAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

        /// <summary>Undoes a prepared action. Never throws.</summary>
        public virtual ValueTask AbortAsync() => ValueTask.CompletedTask;

        /// <summary>QEMU's action_check_completion_mode, which every bitmap action calls first.</summary>
        protected void CheckCompletionMode()
        {
            if (Grouped)
            {
                throw QmpException.Generic($"Action '{Kind}' does not support Transaction property completion-mode = grouped");
            }
        }
    }

    sealed class AbortAction : TransactionAction
    {
        public override ValueTask PrepareAsync(CancellationToken cancellationToken) =>
            throw QmpException.Generic("Transaction aborted using Abort action");
    }

    /// <summary>Removes a bitmap from its node, and a persistent one from the image too.</summary>
    static async ValueTask ReleaseBitmapAsync(BlockNode node, DirtyBitmap bitmap)
    {
        if (bitmap.Persistent && node.Driver is IPersistentBitmaps store)
        {
            await store.RemovePersistentBitmapAsync(bitmap.Name!).ConfigureAwait(false);
        }
        else
        {
            node.ReleaseDirtyBitmap(bitmap);
        }
    }

    /// <summary>block-dirty-bitmap-add (qmp_block_dirty_bitmap_add); undone by removing the bitmap it made.</summary>
    sealed class AddBitmapAction(StorageDaemon daemon, string nodeName, string name, uint? granularity, bool persistent, bool disabled) : TransactionAction
    {
        BlockNode? _node;
        DirtyBitmap? _bitmap;

        public override ValueTask PrepareAsync(CancellationToken cancellationToken)
        {
            CheckCompletionMode();
            if (name.Length == 0)
            {
                throw QmpException.Generic("Bitmap name cannot be empty");
            }

            var node = daemon.FindNode(nodeName);
            long bytes;
            if (granularity is { } given)
            {
                bytes = given >= DirtyBitmap.MinGranularity && BitOperations.IsPow2(given) ? given
                    : throw QmpException.Generic("Granularity must be power of 2 and at least 512");
            }
            else
            {
                bytes = DirtyBitmap.DefaultGranularity(node.Limits.ClusterSize);
            }

            if (persistent)
            {
                var store = node.Driver as IPersistentBitmaps ?? throw QmpException.Generic($"Can't store persistent bitmaps to {node.Name}: Operation not supported");
                _bitmap = store.AddPersistentBitmap(name, bytes, disabled);
            }
            else
            {
                if (FindBitmap(node, name) is not null)
                {
                    throw QmpException.Generic($"Bitmap already exists: {name}");
                }

                if (Encoding.UTF8.GetByteCount(name) > MaxBitmapNameBytes)
                {
                    throw QmpException.Generic($"Bitmap name too long: {name}");
                }

                _bitmap = node.CreateDirtyBitmap(bytes, name);
                _bitmap.Enabled = !disabled;
            }

            _node = node;
            return ValueTask.CompletedTask;
        }

        public override async ValueTask AbortAsync()
        {
            // A persistent bitmap just added is not in the image yet: removing it writes nothing.
            if (_bitmap is { } bitmap)
            {
                await ReleaseBitmapAsync(_node!, bitmap).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// block-dirty-bitmap-remove: prepared by marking the bitmap busy (so no later action of the transaction uses it),
    /// committed by removing it (from the image too when persistent: the one commit that writes).
    /// </summary>
    sealed class RemoveBitmapAction(StorageDaemon daemon, string nodeName, string name) : TransactionAction
    {
        BlockNode? _node;
        DirtyBitmap? _bitmap;

        public override bool CommitWritesImage => _bitmap?.Persistent == true;

        public override ValueTask PrepareAsync(CancellationToken cancellationToken)
        {
            CheckCompletionMode();
            var (node, bitmap) = daemon.LookupBitmap(nodeName, name);
            // Not inconsistent: removing is what an inconsistent bitmap is for.
            CheckBitmap(bitmap, BitmapCheck.Busy | BitmapCheck.ReadOnly);
            bitmap.Busy = true;
            (_node, _bitmap) = (node, bitmap);
            return ValueTask.CompletedTask;
        }

        public override async ValueTask CommitAsync(CancellationToken cancellationToken)
        {
            await ReleaseBitmapAsync(_node!, _bitmap!).ConfigureAwait(false);
            _bitmap!.Busy = false;
        }

        public override ValueTask AbortAsync()
        {
            _bitmap?.Busy = false;
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>block-dirty-bitmap-clear; undone by setting the old bits again (writes since the clear stay marked).</summary>
    sealed class ClearBitmapAction(StorageDaemon daemon, string nodeName, string name) : TransactionAction
    {
        DirtyBitmap? _bitmap;
        DirtyBitmap? _backup;

        public override ValueTask PrepareAsync(CancellationToken cancellationToken)
        {
            CheckCompletionMode();
            var (_, bitmap) = daemon.LookupBitmap(nodeName, name);
            CheckBitmap(bitmap, BitmapCheck.Default);
            _backup = bitmap.Snapshot();
            bitmap.Clear();
            _bitmap = bitmap;
            return ValueTask.CompletedTask;
        }

        public override ValueTask AbortAsync()
        {
            if (_backup is { } backup)
            {
                _bitmap!.Merge(backup);
            }

            return ValueTask.CompletedTask;
        }
    }

    /// <summary>block-dirty-bitmap-enable and -disable (allowed on a read-only bitmap, as QEMU's); undone by restoring the old state.</summary>
    sealed class EnableBitmapAction(StorageDaemon daemon, string nodeName, string name, bool enable) : TransactionAction
    {
        DirtyBitmap? _bitmap;
        bool _wasEnabled;

        public override ValueTask PrepareAsync(CancellationToken cancellationToken)
        {
            CheckCompletionMode();
            var (_, bitmap) = daemon.LookupBitmap(nodeName, name);
            CheckBitmap(bitmap, BitmapCheck.AllowReadOnly);
            _wasEnabled = bitmap.Enabled;
            bitmap.Enabled = enable;
            _bitmap = bitmap;
            return ValueTask.CompletedTask;
        }

        public override ValueTask AbortAsync()
        {
            _bitmap?.Enabled = _wasEnabled;
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>
    /// block-dirty-bitmap-merge (QEMU's block_dirty_bitmap_merge): the sources, a name on the target's node or a
    /// {node, name} on any node, are merged into a scratch bitmap first, so a failure leaves the target as it was;
    /// then the scratch into the target. Undone by restoring the target's bits.
    /// </summary>
    sealed class MergeBitmapAction(StorageDaemon daemon, string nodeName, string target, IReadOnlyList<(string? Node, string Name)> sources) : TransactionAction
    {
        DirtyBitmap? _target;
        DirtyBitmap? _backup;

        public override ValueTask PrepareAsync(CancellationToken cancellationToken)
        {
            CheckCompletionMode();
            var (node, destination) = daemon.LookupBitmap(nodeName, target);
            var merged = new DirtyBitmap(destination.Granularity, destination.Length);
            foreach (var (sourceNode, sourceName) in sources)
            {
                var source = sourceNode is null
                    ? FindBitmap(node, sourceName) ?? throw QmpException.Generic($"Dirty bitmap '{sourceName}' not found")
                    : daemon.LookupBitmap(sourceNode, sourceName).Bitmap;
                CheckBitmap(source, BitmapCheck.AllowReadOnly);
                CheckSameSize(merged, source);
                merged.Merge(source);
            }

            CheckBitmap(destination, BitmapCheck.Default);
            _backup = destination.Snapshot();
            destination.Merge(merged);
            _target = destination;
            return ValueTask.CompletedTask;
        }

        static void CheckSameSize(DirtyBitmap destination, DirtyBitmap source)
        {
            if (destination.Length != source.Length)
            {
                throw QmpException.Generic(
                    $"Bitmaps are of different sizes (destination size is {destination.Length}, source size is {source.Length}) and can't be merged");
            }
        }

        public override ValueTask AbortAsync()
        {
            if (_backup is { } backup)
            {
                _target!.Restore(backup);
            }

            return ValueTask.CompletedTask;
        }
    }
}
