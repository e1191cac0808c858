using System.Buffers;
using System.Buffers.Binary;

namespace BlockMirror.Nbd.Protocol;

/// <summary>One transmission request, as the client sent it.</summary>
public readonly record struct NbdRequest(NbdCommandFlags Flags, NbdCommand Command, ulong Cookie, ulong Offset, uint Length);

/// <summary>The header of one option request of the handshake.</summary>
public readonly record struct NbdOptionHeader(ulong Magic, NbdOption Option, uint Length);

/// <summary>The header of one option reply: <see cref="Length"/> bytes of data follow.</summary>
public readonly record struct NbdOptionReplyHeader(ulong Magic, NbdOption Option, NbdOptionReply Reply, uint Length)
{
    /// <summary>Error replies have bit 31 set (proto.md); their data is a message for a person.</summary>
    public bool IsError => ((uint)Reply & 0x80000000) != 0;
}

/// <summary>
/// The fixed part of a transmission reply, simple or structured: which request (<see cref="Cookie"/>), and
/// for a simple reply its error, for a chunk its type, flags and payload length.
/// </summary>
public readonly record struct NbdReplyHeader(uint Magic, NbdError Error, ulong Cookie, NbdChunkFlags Flags, NbdChunkType Type, uint Length)
{
    public bool IsStructured => Magic == NbdMagic.StructuredReply;
}

/// <summary>
/// Encoding and decoding of the fixed-size parts of the protocol (doc/proto.md), big-endian throughout.
/// Variable parts (names, payloads) are read by the connection once the header says how long they are.
/// </summary>
public static class NbdWire
{
    /// <summary>
    /// A transmission request:
    /// <code>
    /// 0       4       6       8               16              24      28
    /// +-------+-------+-------+---------------+---------------+-------+
    /// | magic | flags | type  | cookie        | offset        | length|
    /// +-------+-------+-------+---------------+---------------+-------+
    ///   u32     u16     u16     u64             u64             u32
    /// </code>
    /// A WRITE request is followed by <c>length</c> bytes of payload.
    /// </summary>
    public const int RequestSize = 28;

    /// <summary>Option request header: u64 "IHAVEOPT", u32 option, u32 length of the data that follows.</summary>
    public const int OptionHeaderSize = 16;

    /// <summary>Option reply header: u64 reply magic, u32 option, u32 reply type, u32 length of the data that follows.</summary>
    public const int OptionReplyHeaderSize = 20;

    /// <summary>Simple reply: u32 magic, u32 error, u64 cookie. Read data follows on success.</summary>
    public const int SimpleReplySize = 16;

    /// <summary>Structured reply chunk header: u32 magic, u16 flags, u16 type, u64 cookie, u32 length of the payload.</summary>
    public const int ChunkHeaderSize = 20;

    /// <summary>
    /// Takes one request off the front of <paramref name="buffer"/> when a whole header is there. The magic is
    /// returned in the out parameter's place by <paramref name="magic"/>, for the caller to check: a wrong magic
    /// means the stream is out of step, and the only safe answer is to close the connection.
    /// </summary>
    public static bool TryReadRequest(ref ReadOnlySequence<byte> buffer, out uint magic, out NbdRequest request)
    {
        if (buffer.Length < RequestSize)
        {
            magic = 0;
            request = default;
            return false;
        }

        Span<byte> header = stackalloc byte[RequestSize];
        buffer.Slice(0, RequestSize).CopyTo(header);
        magic = BinaryPrimitives.ReadUInt32BigEndian(header);
        request = new NbdRequest(
            (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(header[4..]),
            (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(header[6..]),
            BinaryPrimitives.ReadUInt64BigEndian(header[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(header[16..]),
            BinaryPrimitives.ReadUInt32BigEndian(header[24..]));
        buffer = buffer.Slice(RequestSize);
        return true;
    }

    /// <summary>Takes one option header off the front of <paramref name="buffer"/> when it is all there.</summary>
    public static bool TryReadOptionHeader(ref ReadOnlySequence<byte> buffer, out NbdOptionHeader header)
    {
        if (buffer.Length < OptionHeaderSize)
        {
            header = default;
            return false;
        }

        Span<byte> bytes = stackalloc byte[OptionHeaderSize];
        buffer.Slice(0, OptionHeaderSize).CopyTo(bytes);
        header = new NbdOptionHeader(
            BinaryPrimitives.ReadUInt64BigEndian(bytes),
            (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(bytes[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(bytes[12..]));
        buffer = buffer.Slice(OptionHeaderSize);
        return true;
    }

    /// <summary>Writes a request (for clients and tests).</summary>
    public static void WriteRequest(IBufferWriter<byte> writer, in NbdRequest request) =>
        writer.Advance(WriteRequest(writer.GetSpan(RequestSize), request));

    /// <summary>Writes a request at the start of <paramref name="span"/>; returns its size.</summary>
    public static int WriteRequest(Span<byte> span, in NbdRequest request)
    {
        BinaryPrimitives.WriteUInt32BigEndian(span, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], (ushort)request.Flags);
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)request.Command);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], request.Cookie);
        BinaryPrimitives.WriteUInt64BigEndian(span[16..], request.Offset);
        BinaryPrimitives.WriteUInt32BigEndian(span[24..], request.Length);
        return RequestSize;
    }

    /// <summary>Writes an option request header (the client's side); <paramref name="length"/> bytes of data must follow.</summary>
    public static void WriteOptionHeader(IBufferWriter<byte> writer, NbdOption option, uint length)
    {
        var span = writer.GetSpan(OptionHeaderSize);
        BinaryPrimitives.WriteUInt64BigEndian(span, NbdMagic.Option);
        BinaryPrimitives.WriteUInt32BigEndian(span[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(span[12..], length);
        writer.Advance(OptionHeaderSize);
    }

    /// <summary>Reads an option reply header (the client's side) from <paramref name="bytes"/>, which holds <see cref="OptionReplyHeaderSize"/> bytes.</summary>
    public static NbdOptionReplyHeader ReadOptionReplyHeader(ReadOnlySpan<byte> bytes) => new(
        BinaryPrimitives.ReadUInt64BigEndian(bytes),
        (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(bytes[8..]),
        (NbdOptionReply)BinaryPrimitives.ReadUInt32BigEndian(bytes[12..]),
        BinaryPrimitives.ReadUInt32BigEndian(bytes[16..]));

    /// <summary>
    /// Reads the start of a transmission reply (the client's side). A simple reply is
    /// <see cref="SimpleReplySize"/> bytes, a chunk header <see cref="ChunkHeaderSize"/>: the caller reads the
    /// first 16, calls this, and for a structured reply (<paramref name="more"/> = 4) reads the payload length
    /// with <see cref="ReadChunkLength"/>. A magic that is neither leaves the stream out of step.
    /// </summary>
    public static NbdReplyHeader ReadReplyStart(ReadOnlySpan<byte> bytes, out int more)
    {
        var magic = BinaryPrimitives.ReadUInt32BigEndian(bytes);
        if (magic == NbdMagic.StructuredReply)
        {
            more = ChunkHeaderSize - SimpleReplySize;
            return new NbdReplyHeader(magic, NbdError.None, BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]),
                (NbdChunkFlags)BinaryPrimitives.ReadUInt16BigEndian(bytes[4..]), (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(bytes[6..]), 0);
        }

        more = 0;
        return new NbdReplyHeader(magic, (NbdError)BinaryPrimitives.ReadUInt32BigEndian(bytes[4..]), BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]),
            NbdChunkFlags.Done, NbdChunkType.None, 0);
    }

    /// <summary>Completes a structured reply header with its payload length, the last 4 bytes of the chunk header.</summary>
    public static NbdReplyHeader ReadChunkLength(in NbdReplyHeader start, ReadOnlySpan<byte> lengthBytes) =>
        start with { Length = BinaryPrimitives.ReadUInt32BigEndian(lengthBytes) };

    /// <summary>Writes an option reply header; <paramref name="length"/> bytes of data must follow.</summary>
    public static void WriteOptionReplyHeader(IBufferWriter<byte> writer, NbdOption option, NbdOptionReply reply, uint length)
    {
        var span = writer.GetSpan(OptionReplyHeaderSize);
        BinaryPrimitives.WriteUInt64BigEndian(span, NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(span[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(span[12..], (uint)reply);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], length);
        writer.Advance(OptionReplyHeaderSize);
    }

    /// <summary>Writes a simple reply header; on a successful read the data follows.</summary>
    public static void WriteSimpleReply(IBufferWriter<byte> writer, NbdError error, ulong cookie) =>
        writer.Advance(WriteSimpleReply(writer.GetSpan(SimpleReplySize), error, cookie));

    /// <summary>Writes a simple reply header at the start of <paramref name="destination"/>; returns its size.</summary>
    public static int WriteSimpleReply(Span<byte> destination, NbdError error, ulong cookie)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        return SimpleReplySize;
    }

    /// <summary>Writes a structured reply chunk header; <paramref name="length"/> bytes of payload must follow.</summary>
    public static void WriteChunkHeader(IBufferWriter<byte> writer, NbdChunkFlags flags, NbdChunkType type, ulong cookie, uint length) =>
        writer.Advance(WriteChunkHeader(writer.GetSpan(ChunkHeaderSize), flags, type, cookie, length));

    /// <summary>Writes a structured reply chunk header at the start of <paramref name="destination"/>; returns its size.</summary>
    public static int WriteChunkHeader(Span<byte> destination, NbdChunkFlags flags, NbdChunkType type, ulong cookie, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], length);
        return ChunkHeaderSize;
    }

    public static void WriteUInt16(IBufferWriter<byte> writer, ushort value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(writer.GetSpan(2), value);
        writer.Advance(2);
    }

    public static void WriteUInt32(IBufferWriter<byte> writer, uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(writer.GetSpan(4), value);
        writer.Advance(4);
    }

    public static void WriteUInt64(IBufferWriter<byte> writer, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(writer.GetSpan(8), value);
        writer.Advance(8);
    }
}
