using System.Buffers;
using System.Runtime.InteropServices;

namespace BlockMirror.Block.Buffers;

/// <summary>
/// Native memory aligned to a boundary (O_DIRECT needs buffer addresses aligned to the block size).
/// The memory is not moved by the GC, so pinning it is free.
/// </summary>
public sealed unsafe class AlignedMemory : MemoryManager<byte>
{
    /// <summary>An alignment that suits every buffer, also for a node opened with O_DIRECT (the file driver's demand).</summary>
    public const int DirectAlignment = 4096;

    readonly int _length;
    byte* _pointer;

    /// <summary>Allocates <paramref name="length"/> bytes at a multiple of <paramref name="alignment"/>.</summary>
    /// <param name="clear">
    /// Zero the memory now. A buffer that is always filled before it is read can skip it: a large
    /// allocation then comes from the kernel as pages it maps only when first touched, so memory that is
    /// never used is never resident.
    /// </param>
    public AlignedMemory(int length, int alignment, bool clear = true)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        _length = length;
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)length, (nuint)alignment);
        if (clear)
        {
            NativeMemory.Clear(_pointer, (nuint)length);
        }
    }

    public int Length => _length;

    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(_pointer is null, this);
        return new Span<byte>(_pointer, _length);
    }

    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
        if (_pointer is not null)
        {
            NativeMemory.AlignedFree(_pointer);
            _pointer = null;
        }
    }

    /// <summary>True when the memory starts at an address that is a multiple of <paramref name="alignment"/>.</summary>
    public static bool IsAligned(ReadOnlyMemory<byte> memory, int alignment)
    {
        using var handle = memory.Pin();
        return (nuint)handle.Pointer % (nuint)alignment == 0;
    }
}
