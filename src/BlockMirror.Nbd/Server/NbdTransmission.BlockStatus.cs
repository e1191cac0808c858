using System.Buffers;
using System.Buffers.Binary;
using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Server;

// NBD_CMD_BLOCK_STATUS: one chunk per meta context the client chose, the last one flagged done.
sealed partial class NbdTransmission
{
    /// <summary>Most extents one context's chunk describes; the client asks again from where the chunk ends.</summary>
    internal const int MaxExtents = 2048;

    /// <summary>
    /// One context's chunk at most:
    /// <code>
    /// 0              20          24       32       40
    /// +--------------+-----------+--------+--------+--- ... ---+
    /// | chunk header | context id| length | flags  |  MaxExtents
    /// +--------------+-----------+--------+--------+--- ... ---+
    ///                   u32         u32      u32     extents in all
    /// </code>
    /// </summary>
    const int StatusChunkSize = NbdWire.ChunkHeaderSize + 4 + 8 * MaxExtents;

    /// <summary>
    /// Answers a block status request: the chunks of every chosen context are written one after the other into
    /// one pooled buffer and sent as one reply body (its header is the first chunk's, inside the body). With
    /// NBD_CMD_FLAG_REQ_ONE each chunk holds one extent, as long as the status found from the offset lasts.
    /// </summary>
    async ValueTask BlockStatusAsync(NbdRequest request)
    {
        var chosen = contexts!;
        var capacity = (request.Flags & NbdCommandFlags.RequestOne) != 0 ? 1 : MaxExtents;
        var body = ArrayPool<byte>.Shared.Rent(chosen.Count * StatusChunkSize);
        var used = 0;
        try
        {
            var remaining = chosen.Count;
            if (chosen.BaseAllocation)
            {
                var extents = new NbdExtentWriter(body, used + NbdWire.ChunkHeaderSize + 4, capacity);
                var length = await AllocationExtentsAsync(request, extents).ConfigureAwait(false);
                used += FinishChunk(body, used, request.Cookie, NbdMetaContexts.BaseAllocationId, length, --remaining == 0);
            }

            if (chosen.AllocationDepth)
            {
                var extents = new NbdExtentWriter(body, used + NbdWire.ChunkHeaderSize + 4, capacity);
                var length = await DepthExtentsAsync(request, extents).ConfigureAwait(false);
                used += FinishChunk(body, used, request.Cookie, NbdMetaContexts.AllocationDepthId, length, --remaining == 0);
            }

            for (var i = 0; i < export.Bitmaps.Count; i++)
            {
                if (chosen.IsBitmapSelected(i))
                {
                    var extents = new NbdExtentWriter(body, used + NbdWire.ChunkHeaderSize + 4, capacity);
                    BitmapExtents(export.Bitmaps[i], (long)request.Offset, (long)request.Offset + request.Length, ref extents);
                    used += FinishChunk(body, used, request.Cookie, NbdMetaContexts.FirstBitmapId + (uint)i, extents.Length, --remaining == 0);
                }
            }
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(body);
            throw;
        }

        var reply = new Reply { Body = body, BodyLength = used };
        Queue(ref reply);
    }

    /// <summary>Writes a chunk's header and context id in front of its <paramref name="extentBytes"/> bytes of extents; returns the chunk's size.</summary>
    static int FinishChunk(byte[] body, int at, ulong cookie, uint contextId, int extentBytes, bool last)
    {
        NbdWire.WriteChunkHeader(body.AsSpan(at), last ? NbdChunkFlags.Done : NbdChunkFlags.None, NbdChunkType.BlockStatus, cookie, (uint)(4 + extentBytes));
        BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(at + NbdWire.ChunkHeaderSize), contextId);
        return NbdWire.ChunkHeaderSize + 4 + extentBytes;
    }

    /// <summary>
    /// <c>base:allocation</c> from the node's chain: HOLE where the chain holds no data (it reads zeroes or falls
    /// through), ZERO where it reads zeroes, as QEMU's NBD server maps block status.
    /// </summary>
    /// <returns>The bytes of extents written (the writer is a copy: an async method cannot take it by reference).</returns>
    async ValueTask<int> AllocationExtentsAsync(NbdRequest request, NbdExtentWriter extents)
    {
        var offset = (long)request.Offset;
        var end = offset + request.Length;
        while (offset < end)
        {
            var status = await BlockChain.GetBlockStatusAboveAsync(_edge.Node, null, offset, end - offset).ConfigureAwait(false);
            var state = (status.IsData ? NbdAllocationState.None : NbdAllocationState.Hole) |
                (status.IsZero ? NbdAllocationState.Zero : NbdAllocationState.None);
            var length = Math.Min(status.Length, end - offset);
            if (!extents.TryAdd(length, (uint)state))
            {
                break;
            }

            offset += length;
        }

        return extents.Length;
    }

    /// <summary>
    /// <c>qemu:allocation-depth</c>: per extent the layer of the node's chain that decides it, 1 for the node itself,
    /// 0 for none (QEMU's blockalloc_to_extents).
    /// </summary>
    /// <returns>The bytes of extents written.</returns>
    async ValueTask<int> DepthExtentsAsync(NbdRequest request, NbdExtentWriter extents)
    {
        var offset = (long)request.Offset;
        var end = offset + request.Length;
        while (offset < end)
        {
            var (depth, length) = await BlockChain.AllocationDepthAsync(_edge.Node, offset, end - offset).ConfigureAwait(false);
            length = Math.Min(length, end - offset);
            if (!extents.TryAdd(length, (uint)depth))
            {
                break;
            }

            offset += length;
        }

        return extents.Length;
    }

    /// <summary>
    /// A dirty bitmap's extents over [<paramref name="offset"/>, <paramref name="end"/>): alternately clean and
    /// dirty runs, each found a word (64 chunks) at a time in the bitmap. A run cut by a concurrent writer is
    /// joined again by the writer's merge, so the client sees runs, not chunks.
    /// </summary>
    static void BitmapExtents(DirtyBitmap bitmap, long offset, long end, ref NbdExtentWriter extents)
    {
        var position = offset;
        while (position < end)
        {
            var dirty = bitmap.NextDirty(position);
            if (dirty < 0 || dirty > end)
            {
                dirty = end;
            }

            if (!extents.TryAdd(dirty - position, (uint)NbdDirtyState.Clean) || dirty == end)
            {
                return;
            }

            // A chunk cleared since NextDirty found it ends the run where it starts; the next search moves on.
            var runEnd = bitmap.DirtyRunEnd(dirty, end);
            if (!extents.TryAdd(runEnd - dirty, (uint)NbdDirtyState.Dirty))
            {
                return;
            }

            position = runEnd;
        }
    }
}
