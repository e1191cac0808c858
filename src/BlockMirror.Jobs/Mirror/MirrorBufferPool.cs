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
        _memory = new AlignedMemory(checked((int)bufSize), 4096);
        for (var i = (int)(bufSize / chunkSize) - 1; i >= 0; i--)
        {
            _free.Push(i);
        }
    }

    public int FreeChunks => _free.Count;

    /// <summary>Fills <paramref name="segments"/> with chunks covering <paramref name="length"/> bytes; the caller checked there are enough.</summary>
    public void Take(long length, List<Memory<byte>> segments)
    {
        segments.Clear();
        for (long covered = 0; covered < length; covered += _chunkSize)
        {
            var index = _free.Pop();
            var size = (int)Math.Min(_chunkSize, length - covered);
            segments.Add(_memory.Memory.Slice(index * _chunkSize, size));
        }
    }

    /// <summary>Puts back chunks taken by <see cref="Take"/>.</summary>
    public void Return(List<Memory<byte>> segments)
    {
        foreach (var segment in segments)
        {
            System.Runtime.InteropServices.MemoryMarshal.TryGetMemoryManager<byte, AlignedMemory>(segment, out _, out var start, out _);
            _free.Push(start / _chunkSize);
        }

        segments.Clear();
    }

    public void Dispose() => ((IDisposable)_memory).Dispose();
}
