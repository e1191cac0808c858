using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using BlockMirror.Block.Graph;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Server;

// NBD_CMD_READ with structured replies and without NBD_CMD_FLAG_DF: the range is answered in chunks split by block
// status, OFFSET_HOLE where the chain reads zeroes and OFFSET_DATA elsewhere, as QEMU's server does; only the data
// is read from the node and sent.
sealed partial class NbdTransmission
{
    /// <summary>A hole chunk: chunk header, u64 offset, u32 length.</summary>
    const int HoleChunkSize = NbdWire.ChunkHeaderSize + 12;

    /// <summary>A data chunk's header: chunk header, u64 offset; the data follows.</summary>
    const int DataChunkHeaderSize = NbdWire.ChunkHeaderSize + 8;

    /// <summary>
    /// Reads the data parts of [<paramref name="offset"/>, +<paramref name="length"/>) into one request buffer, each
    /// at its place in the request, and queues the reply as a list of chunks: one per block status run, as the
    /// chain reports them (QEMU's server does not join runs either).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask SparseReadAsync(NbdRequest request, long offset, int length)
    {
        var buffer = _buffers.Rent(length);
        var chunks = ArrayPool<ReadChunk>.Shared.Rent(4);
        var count = 0;
        try
        {
            for (var done = 0; done < length;)
            {
                var status = await BlockChain.GetBlockStatusAboveAsync(_edge.Node, null, offset + done, length - done).ConfigureAwait(false);
                var run = (int)Math.Min(status.Length, length - done);
                Debug.Assert(run > 0, "block status reports at least one byte");
                if (!status.IsZero)
                {
                    await _edge.ReadAsync(offset + done, buffer.Memory.Slice(done, run)).ConfigureAwait(false);
                }

                if (count == chunks.Length)
                {
                    var larger = ArrayPool<ReadChunk>.Shared.Rent(count * 2);
                    chunks.AsSpan(0, count).CopyTo(larger);
                    ArrayPool<ReadChunk>.Shared.Return(chunks);
                    chunks = larger;
                }

                chunks[count++] = new ReadChunk(done, run, status.IsZero);
                done += run;
            }
        }
        catch
        {
            _buffers.Return(buffer);
            ArrayPool<ReadChunk>.Shared.Return(chunks);
            throw;
        }

        var reply = new Reply { Data = buffer, Chunks = chunks, ChunkCount = count, Cookie = request.Cookie, Offset = request.Offset };
        Queue(ref reply);
    }

    /// <summary>Puts the chunks of the sparse read <c>_sendingReplies[index]</c> into the gather, flushing it when full.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask GatherSparseReadAsync(int index)
    {
        for (var c = 0; c < _sendingReplies[index].ChunkCount; c++)
        {
            var (chunks, data) = (_sendingReplies[index].Chunks!, _sendingReplies[index].Data!);
            var chunk = chunks[c];
            var coalesce = chunk.Hole || chunk.Length <= CoalesceLimit;
            var copied = chunk.Hole ? HoleChunkSize : DataChunkHeaderSize + (coalesce ? chunk.Length : 0);
            if (!_gather.HasRoom(copied, coalesce ? 0 : 1))
            {
                // Mid-reply: the replies before this one are out whole.
                await FlushAsync(index).ConfigureAwait(false);
            }

            WriteChunk(_gather.Append(chunk.Hole ? HoleChunkSize : DataChunkHeaderSize), in _sendingReplies[index], chunk, c == _sendingReplies[index].ChunkCount - 1);
            if (!chunk.Hole)
            {
                var bytes = data.Memory.Slice(chunk.Start, chunk.Length);
                if (coalesce)
                {
                    bytes.Span.CopyTo(_gather.Append(chunk.Length));
                }
                else
                {
                    _gather.Add(bytes);
                }
            }
        }
    }

    /// <summary>A hole chunk whole, or a data chunk's header.</summary>
    static void WriteChunk(Span<byte> span, in Reply reply, ReadChunk chunk, bool last)
    {
        var flags = last ? NbdChunkFlags.Done : NbdChunkFlags.None;
        var at = (ulong)chunk.Start + reply.Offset;
        if (chunk.Hole)
        {
            NbdWire.WriteChunkHeader(span, flags, NbdChunkType.OffsetHole, reply.Cookie, 12);
            BinaryPrimitives.WriteUInt64BigEndian(span[NbdWire.ChunkHeaderSize..], at);
            BinaryPrimitives.WriteUInt32BigEndian(span[(NbdWire.ChunkHeaderSize + 8)..], (uint)chunk.Length);
        }
        else
        {
            NbdWire.WriteChunkHeader(span, flags, NbdChunkType.OffsetData, reply.Cookie, (uint)(8 + chunk.Length));
            BinaryPrimitives.WriteUInt64BigEndian(span[NbdWire.ChunkHeaderSize..], at);
        }
    }
}
