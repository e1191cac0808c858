using System.Buffers.Binary;

namespace BlockMirror.Cli.Tests;

/// <summary>Reads a mirror's write-intent log file as the tests judge it (WriteIntentLog's format: 4 KiB header, then one bit per region).</summary>
static class WriteIntentLogFile
{
    /// <summary>Bytes the log marks: its header's region size times its set bits.</summary>
    public static long MarkedBytes(string path)
    {
        byte[] bytes;
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
        {
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }

        var regionSize = BinaryPrimitives.ReadInt64BigEndian(bytes.AsSpan(16));
        var regions = BinaryPrimitives.ReadInt64BigEndian(bytes.AsSpan(24));
        long set = 0;
        for (var r = 0; r < regions; r++)
        {
            set += (bytes[4096 + (r >> 3)] >> (int)(r & 7)) & 1;
        }

        return set * regionSize;
    }
}
