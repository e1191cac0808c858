using System.Buffers.Binary;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// Block status extents written into a reply chunk as they are found: a u32 length and u32 flags each,
/// big-endian, from <c>start</c> in the buffer. An extent with the flags of the one before extends it while the
/// sum fits in 32 bits, so a run the search found in pieces is one extent on the wire; an empty one is dropped
/// (QEMU's NBDExtentArray does the same).
/// </summary>
struct NbdExtentWriter(byte[] buffer, int start, int capacity)
{
    int _count;

    /// <summary>Bytes written so far.</summary>
    public readonly int Length => 8 * _count;

    /// <summary>Adds an extent; false when the chunk is full, and then the reply ends before it.</summary>
    public bool TryAdd(long length, uint flags)
    {
        if (length <= 0)
        {
            return true;
        }

        if (_count > 0)
        {
            var last = buffer.AsSpan(start + 8 * (_count - 1), 8);
            var sum = BinaryPrimitives.ReadUInt32BigEndian(last) + length;
            if (BinaryPrimitives.ReadUInt32BigEndian(last[4..]) == flags && sum <= uint.MaxValue)
            {
                BinaryPrimitives.WriteUInt32BigEndian(last, (uint)sum);
                return true;
            }
        }

        if (_count == capacity)
        {
            return false;
        }

        var entry = buffer.AsSpan(start + 8 * _count, 8);
        BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)length);
        BinaryPrimitives.WriteUInt32BigEndian(entry[4..], flags);
        _count++;
        return true;
    }
}
