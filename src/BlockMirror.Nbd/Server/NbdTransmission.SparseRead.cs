using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
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
    /// Reads the data parts of [<paramref name="offset"/>, +<paramref name="length"/>) into one pipe, in order, or into
    /// one request buffer, each at its place in the request, and queues the reply as a list of chunks: one per block
    /// status run, as the chain reports them (QEMU's server does not join runs either). The runs are all known
    /// before the first read, so that the pipe is chosen only when every data run fits in it.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask SparseReadAsync(NbdRequest request, long offset, int length)
    {
        var chunks = ArrayPool<ReadChunk>.Shared.Rent(4);
        var count = 0;
        SplicePipe? pipe = null;
        AlignedMemory? buffer = null;
        try
        {
            long pages = 0;
            for (var done = 0; done < length;)
            {
                var status = await BlockChain.GetBlockStatusAboveAsync(_edge.Node, null, offset + done, length - done).ConfigureAwait(false);
                var run = (int)Math.Min(status.Length, length - done);
                Debug.Assert(run > 0, "block status reports at least one byte");
                if (count == chunks.Length)
                {
                    var larger = ArrayPool<ReadChunk>.Shared.Rent(count * 2);
                    chunks.AsSpan(0, count).CopyTo(larger);
                    ArrayPool<ReadChunk>.Shared.Return(chunks);
                    chunks = larger;
                }

                chunks[count++] = new ReadChunk(done, run, status.IsZero);
                pages += status.IsZero ? 0 : SplicePipe.PagesFor(offset + done, run);
                done += run;
            }

            pipe = pages > 0 ? RentPipe(offset, length, pages) : null;
            buffer = pipe is null ? _buffers.Rent(length) : null;
            for (var c = 0; c < count; c++)
            {
                var chunk = chunks[c];
                if (chunk.Hole)
                {
                    continue;
                }

                if (pipe is not null)
                {
                    await _edge.SpliceReadAsync(offset + chunk.Start, chunk.Length, pipe).ConfigureAwait(false);
                }
                else
                {
                    await _edge.ReadAsync(offset + chunk.Start, buffer!.Memory.Slice(chunk.Start, chunk.Length)).ConfigureAwait(false);
                }
            }
        }
        catch
        {
            if (pipe is not null)
            {
                pipe.Release();
            }

            if (buffer is not null)
            {
                _buffers.Return(buffer);
            }

            ArrayPool<ReadChunk>.Shared.Return(chunks);
            throw;
        }

        if (pipe is not null)
        {
            Interlocked.Increment(ref SplicedReads);
        }

        var reply = new Reply { Data = buffer, Pipe = pipe, Chunks = chunks, ChunkCount = count, Cookie = request.Cookie, Offset = request.Offset };
        Queue(ref reply);
    }

    /// <summary>Puts the chunks of the sparse read <c>_sendingReplies[index]</c> into the gather, flushing it when full.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    async ValueTask GatherSparseReadAsync(int index)
    {
        for (var c = 0; c < _sendingReplies[index].ChunkCount; c++)
        {
            var chunks = _sendingReplies[index].Chunks!;
            var chunk = chunks[c];
            if (!chunk.Hole && _sendingReplies[index].Pipe is { } pipe)
            {
                if (!_gather.HasRoom(DataChunkHeaderSize, 0))
                {
                    await FlushAsync(index).ConfigureAwait(false);
                }

                WriteChunk(_gather.Append(DataChunkHeaderSize), in _sendingReplies[index], chunk, c == _sendingReplies[index].ChunkCount - 1);
                await SendHeaderAndPipeAsync(index, pipe, chunk.Length, headerAppended: true).ConfigureAwait(false);
                continue;
            }

            var data = _sendingReplies[index].Data!;
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
