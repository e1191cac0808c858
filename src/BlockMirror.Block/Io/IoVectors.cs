namespace BlockMirror.Block.Io;

/// <summary>Helpers for scatter/gather lists.</summary>
public static class IoVectors
{
    public static long TotalLength(IReadOnlyList<Memory<byte>> buffers)
    {
        long total = 0;
        for (var i = 0; i < buffers.Count; i++)
        {
            total += buffers[i].Length;
        }

        return total;
    }

    public static long TotalLength(IReadOnlyList<ReadOnlyMemory<byte>> buffers)
    {
        long total = 0;
        for (var i = 0; i < buffers.Count; i++)
        {
            total += buffers[i].Length;
        }

        return total;
    }
}
