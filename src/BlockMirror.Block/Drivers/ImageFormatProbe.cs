using System.Buffers.Binary;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Drivers.Raw;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// Which image format the first bytes of a file announce, as QEMU's format probe sees them. Every format
/// QEMU would recognise is named here, not only those this build opens: a file that QEMU would open as a
/// vmdk must never be written as raw data by us (that is how a guest turns a raw disk into a header that
/// points at any file on the host), and must not be opened as raw either.
/// </summary>
public static class ImageFormatProbe
{
    /// <summary>How much of a file the probe looks at (QEMU's BLOCK_PROBE_BUF_SIZE for the raw guard).</summary>
    public const int Size = 512;

    static readonly (string Format, int Offset, byte[] Magic)[] Signatures =
    [
        ("qed", 0, "QED\0"u8.ToArray()),
        ("vmdk", 0, "KDMV"u8.ToArray()),
        ("vmdk", 0, "COWD"u8.ToArray()),
        ("vmdk", 0, "# Disk DescriptorFile"u8.ToArray()),
        ("vpc", 0, "conectix"u8.ToArray()),
        ("vhdx", 0, "vhdxfile"u8.ToArray()),
        ("luks", 0, [(byte)'L', (byte)'U', (byte)'K', (byte)'S', 0xba, 0xbe]),
        ("parallels", 0, "WithoutFreeSpace"u8.ToArray()),
        ("parallels", 0, "WithouFreSpacExt"u8.ToArray()),
        ("bochs", 0, "Bochs Virtual HD Image"u8.ToArray()),
        ("cloop", 0, "#!/bin/sh\n#V2.0 Format\n"u8.ToArray()),
        ("vdi", 64, [0x7f, 0x10, 0xda, 0xbe]),
    ];

    /// <summary>The format the bytes at the start of a file announce; <c>raw</c> when none does.</summary>
    public static string Detect(ReadOnlySpan<byte> start)
    {
        if (start.Length >= 8 && BinaryPrimitives.ReadUInt32BigEndian(start) == Qcow2Header.Magic)
        {
            // QEMU's qcow driver takes version 1, qcow2 takes 2 and up.
            return BinaryPrimitives.ReadUInt32BigEndian(start[4..]) == 1 ? "qcow" : Qcow2Driver.Name;
        }

        foreach (var (format, offset, magic) in Signatures)
        {
            if (start.Length >= offset + magic.Length && start.Slice(offset, magic.Length).SequenceEqual(magic))
            {
                return format;
            }
        }

        return RawDriver.Name;
    }

    /// <summary>The format a file announces (reads its first <see cref="Size"/> bytes; a shorter file is probed as it is).</summary>
    /// <exception cref="IOException">The file cannot be read.</exception>
    /// <exception cref="UnauthorizedAccessException">The file cannot be opened.</exception>
    public static string Detect(string path)
    {
        using var handle = System.IO.File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        Span<byte> start = stackalloc byte[Size];
        var read = 0;
        while (read < Size && RandomAccess.Read(handle, start[read..], read) is var n and > 0)
        {
            read += n;
        }

        return Detect(start[..read]);
    }
}
