using System.Runtime.CompilerServices;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// detect-zeroes (QEMU's bdrv_aligned_pwritev): a write whose data is all zeroes goes to the driver as a
/// write-zeroes, so a guest or a copy that writes zero blocks leaves holes or zero clusters instead of data.
/// The node does it once, for every driver; the data-changing request bodies ask <see cref="DetectsZeroes(ReadOnlySpan{byte})"/>.
/// </summary>
/// <remarks>
/// Off (the default) costs the write one field read. On, the check is a vectorised scan that stops at the
/// first non-zero byte, so a data write pays for its first few bytes only; an all-zero write pays one pass
/// over its buffer and then writes nothing. The request stays a write for the statistics (QEMU counts it
/// where the user sent it) and for the dirty bitmaps.
/// </remarks>
public sealed partial class BlockNode
{
    DetectZeroesMode _detectZeroes;

    /// <summary>
    /// What this node does with an all-zero write (QMP's <c>detect_zeroes</c>). Set when the node is opened;
    /// <see cref="DetectZeroesMode.Unmap"/> only on a node that unmaps (<see cref="DiscardUnmaps"/>).
    /// </summary>
    public DetectZeroesMode DetectZeroes
    {
        get => _detectZeroes;
        internal set => _detectZeroes = value;
    }

    /// <summary>The flags of the write-zeroes a detected zero write becomes: the write's, and may-unmap for unmap.</summary>
    RequestFlags DetectedZeroFlags(RequestFlags flags) =>
        _detectZeroes == DetectZeroesMode.Unmap ? flags | RequestFlags.MayUnmap : flags;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool DetectsZeroes(ReadOnlySpan<byte> data) =>
        _detectZeroes != DetectZeroesMode.Off && !data.ContainsAnyExcept((byte)0);

    bool DetectsZeroes(IReadOnlyList<ReadOnlyMemory<byte>> buffers)
    {
        if (_detectZeroes == DetectZeroesMode.Off)
        {
            return false;
        }

        for (var i = 0; i < buffers.Count; i++)
        {
            if (buffers[i].Span.ContainsAnyExcept((byte)0))
            {
                return false;
            }
        }

        return true;
    }
}
