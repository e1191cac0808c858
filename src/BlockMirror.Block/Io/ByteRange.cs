namespace BlockMirror.Block.Io;

/// <summary>A half-open byte range <c>[Offset, Offset + Length)</c> on a device.</summary>
public readonly record struct ByteRange(long Offset, long Length)
{
    /// <summary>The first byte after the range.</summary>
    public long End => Offset + Length;

    /// <summary>True when the two ranges share at least one byte.</summary>
    public bool Overlaps(ByteRange other) => Offset < other.End && other.Offset < End;

    public override string ToString() => $"offset {Offset} length {Length}";
}
