namespace BlockMirror.TestKit;

/// <summary>The trivial model of a disk: a byte array. Drivers are checked against it.</summary>
public sealed class ByteModel(long size)
{
    public byte[] Bytes { get; } = new byte[size];

    public long Size => Bytes.LongLength;

    public void Write(long offset, ReadOnlySpan<byte> data) => data.CopyTo(Bytes.AsSpan((int)offset));

    public void Zero(long offset, long length) => Bytes.AsSpan((int)offset, (int)length).Clear();

    public ReadOnlySpan<byte> Read(long offset, long length) => Bytes.AsSpan((int)offset, (int)length);

    /// <summary>True when every byte of the range is zero.</summary>
    public bool IsZero(long offset, long length) => !Bytes.AsSpan((int)offset, (int)length).ContainsAnyExcept((byte)0);

    /// <summary>The first offset where <paramref name="actual"/> differs from the model, or -1.</summary>
    public long FirstDifference(ReadOnlySpan<byte> actual, long offset = 0)
    {
        var expected = Bytes.AsSpan((int)offset, actual.Length);
        var common = expected.CommonPrefixLength(actual);
        return common == actual.Length ? -1 : offset + common;
    }
}
