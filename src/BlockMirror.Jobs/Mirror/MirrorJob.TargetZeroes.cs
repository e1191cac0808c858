using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Jobs.Mirror;

/// <summary>What the job knows, at its start, of where its target already reads zeroes (the engine's zero map).</summary>
public sealed partial class MirrorJob
{
    /// <summary>Block-status answers the start's look at the target takes at most; past them the rest is not known zero.</summary>
    const int MaxTargetExtents = 4096;

    /// <summary>
    /// Data extents of the target at most this long are read to see whether they hold zeroes: <c>qemu-img
    /// create</c> and blockdev-create write a raw file's first block (so that alignment can be probed), which
    /// makes a fresh image one small data extent and a hole.
    /// </summary>
    const int MaxZeroCheckExtent = 64 * 1024;

    /// <summary>Bytes of such extents read in all, so a target of many small extents costs a bounded look.</summary>
    const long MaxZeroCheckBytes = 1 << 20;

    /// <summary>
    /// Fills the engine's zero map from what is known of the target before anything is written to it, and
    /// returns whether all of it reads as zeroes. With <c>target-is-zero</c> that is the user's word (QEMU
    /// 10.1); otherwise block status says it: every zero run marks the chunks it fills, and a small data
    /// extent that reads as zeroes counts as zero too (QEMU 10.1's bdrv_co_is_all_zeroes reads the first
    /// block likewise). Where the target's reads will change at the switch (it names a backing file that is
    /// not open yet, and will be then), nothing is known zero: a zero range skipped there would show the
    /// backing's bytes after the switch.
    /// </summary>
    async Task<bool> ScanTargetZeroesAsync()
    {
        var target = _target.Node;
        if (target.Driver.BackingFileName is not null && target.Backing is null)
        {
            return false;
        }

        if (_options.TargetIsZero)
        {
            _engine.MarkTargetZero(0, _length);
            return true;
        }

        byte[]? buffer = null;
        var readBudget = MaxZeroCheckBytes;
        // The start of the zero run being gathered: runs are marked whole, since one chunk may span several.
        long zeroStart = -1;
        var extents = 0;
        for (long offset = 0; offset < _length && extents < MaxTargetExtents; extents++)
        {
            await ThrottleAsync().ConfigureAwait(false);
            if (IsCancelled)
            {
                return false;
            }

            BlockStatus status;
            try
            {
                status = await BlockChain.GetBlockStatusAboveAsync(target, null, offset, _length - offset).ConfigureAwait(false);
            }
            catch (BlockIOException)
            {
                // Cannot tell: the rest is not known zero, which only costs writes that may not have been needed.
                break;
            }

            var zero = status.IsZero;
            if (!zero && status.Length <= MaxZeroCheckExtent && status.Length <= readBudget)
            {
                buffer ??= new byte[MaxZeroCheckExtent];
                var bytes = buffer.AsMemory(0, (int)status.Length);
                try
                {
                    await _target.ReadAsync(offset, bytes).ConfigureAwait(false);
                    zero = !bytes.Span.ContainsAnyExcept((byte)0);
                }
                catch (BlockIOException)
                {
                    // Unreadable is not known zero; the copy will meet the error if it matters.
                }

                readBudget -= status.Length;
            }

            if (zero && zeroStart < 0)
            {
                zeroStart = offset;
            }
            else if (!zero && zeroStart >= 0)
            {
                _engine.MarkTargetZero(zeroStart, offset - zeroStart);
                zeroStart = -1;
            }

            offset += status.Length;
            if (zeroStart >= 0 && (offset >= _length || extents + 1 == MaxTargetExtents))
            {
                _engine.MarkTargetZero(zeroStart, offset - zeroStart);
            }
        }

        return _engine.TargetAllZero;
    }
}
