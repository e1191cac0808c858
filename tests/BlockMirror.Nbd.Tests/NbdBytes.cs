using System.Buffers;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Tests;

/// <summary>Big-endian fields as byte arrays, encoded by <see cref="NbdWire"/>, for tests that put bytes on the wire by hand.</summary>
static class NbdBytes
{
    public static byte[] U16(ushort value) => Encode(writer => NbdWire.WriteUInt16(writer, value));

    public static byte[] U32(uint value) => Encode(writer => NbdWire.WriteUInt32(writer, value));

    public static byte[] U64(ulong value) => Encode(writer => NbdWire.WriteUInt64(writer, value));

    /// <summary>Whatever <paramref name="write"/> writes, as an array.</summary>
    public static byte[] Encode(Action<ArrayBufferWriter<byte>> write)
    {
        var writer = new ArrayBufferWriter<byte>();
        write(writer);
        return writer.WrittenSpan.ToArray();
    }
}
