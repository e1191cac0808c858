using BlockMirror.Block.Buffers;

namespace BlockMirror.Jobs.Mirror;

/// <summary>
/// The mirror's copy buffer: one allocation of buf-size bytes, aligned for O_DIRECT, handed out in
/// granularity-sized chunks from a free list (QEMU's MirrorBuffer). Memory stays bounded by buf-size
/// whatever the disk size. Not thread-safe; the job guards it with its operation lock.
/// </summary>
sealed class MirrorBufferPool : IDisposable
{
    readonly AlignedMemory _memory;
    readonly Stack<int> _free = new();
    readonly int _chunkSize;

    public MirrorBufferPool(long bufSize, long chunkSize)
    {
        _chunkSize = (int)chunkSize;
        // Not zeroed: every chunk is read into before it is written out, and untouched chunks (the tail of
        // the free list, reached only when many copies are in flight) then never become resident.
        _memory = new AlignedMemory(checked((int)bufSize), 4096, clear: false);
        for (var i = (int)(bufSize / chunkSize) - 1; i >= 0; i--)
        {
            _free.Push(i);
        }
    }

    public int FreeChunks => _free.Count;

    /// <summary>
    /// Fills <paramref name="segments"/> with chunks covering <paramref name="length"/> bytes; the caller
    /// checked there are enough. Chunks that lie next to each other in memory become one segment, so
    /// that a whole operation usually reaches the file as one buffer: the kernel gets one iovec, and
    /// .NET's vectored file API (which allocates two arrays per call) is not needed.
    /// </summary>
    public void Take(long length, List<Memory<byte>> segments)
    {
        segments.Clear();
        int runStart = -1, runEnd = -1;
        for (long covered = 0; covered < length; covered += _chunkSize)
        {
            var index = _free.Pop();
            var size = (int)Math.Min(_chunkSize, length - covered);
            if (runStart >= 0 && index * _chunkSize == runEnd)
            {
                runEnd += size;
                continue;
            }

            if (runStart >= 0)
            {
                segments.Add(_memory.Memory[runStart..runEnd]);
            }

            runStart = index * _chunkSize;
            runEnd = runStart + size;
        }

        if (runStart >= 0)
        {
            segments.Add(_memory.Memory[runStart..runEnd]);
        }
    }

    /// <summary>Gives back every chunk of <paramref name="segments"/>.</summary>
    public void Return(List<Memory<byte>> segments)
    {
        // Push the highest chunk first, so that the next Take pops them in ascending order and can
        // merge them again.
        for (var s = segments.Count - 1; s >= 0; s--)
        {
            System.Runtime.InteropServices.MemoryMarshal.TryGetMemoryManager<byte, AlignedMemory>(segments[s], out _, out var start, out var length);
            for (var chunk = (start + length - 1) / _chunkSize; chunk >= start / _chunkSize; chunk--)
            {
                _free.Push(chunk);
            }
        }

        segments.Clear();
    }

    public void Dispose() => ((IDisposable)_memory).Dispose();
}
