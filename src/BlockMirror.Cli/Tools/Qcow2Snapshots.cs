using System.Buffers.Binary;
using System.Text;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;

namespace BlockMirror.Cli.Tools;

/// <summary>One internal snapshot as <c>qemu-img info</c> lists it (QAPI's SnapshotInfo).</summary>
sealed record SnapshotInfo(string Id, string Name, long VmStateSize, long DateSeconds, long DateNanoseconds, long VmClockNanoseconds, long? InstructionCount);

/// <summary>
/// Reads a qcow2 image's snapshot table (docs/interop/qcow2.txt, "Snapshot table") for <c>info</c>. The qcow2
/// driver keeps snapshots intact but does not expose the table, so the command reads it from the file node
/// itself, read-only:
/// <code>
///  0 l1_table_offset (8)   8 l1_size (4)   12 id_str_size (2)   14 name_size (2)
/// 16 date_sec (4)  20 date_nsec (4)  24 vm_clock_nsec (8)  32 vm_state_size (4)  36 extra_data_size (4)
/// 40 extra data: vm_state_size_large (8), disk_size (8), icount (8), ...; then id_str, name; padded to 8.
/// </code>
/// </summary>
static class Qcow2Snapshots
{
    /// <summary>QEMU's QCOW_MAX_SNAPSHOTS.</summary>
    const int MaxSnapshots = 65536;

    /// <summary>QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA.</summary>
    const int MaxExtraData = 1024;

    const int FixedLength = 40;

    public static async Task<IReadOnlyList<SnapshotInfo>> ReadAsync(BlockNode image, Qcow2Header header, string name, CancellationToken cancellationToken)
    {
        if (header.NbSnapshots == 0)
        {
            return [];
        }

        if (header.NbSnapshots > MaxSnapshots)
        {
            throw Bad(name, $"{header.NbSnapshots} snapshots exceed the limit of {MaxSnapshots}");
        }

        var file = image.File?.Node ?? throw Bad(name, "the image has no file node");
        var snapshots = new List<SnapshotInfo>(header.NbSnapshots);
        var offset = header.SnapshotsOffset;
        var fixedPart = new byte[FixedLength];
        for (var i = 0; i < header.NbSnapshots; i++)
        {
            await ReadAsync(file, offset, fixedPart, name, i, cancellationToken);
            var idLength = BinaryPrimitives.ReadUInt16BigEndian(fixedPart.AsSpan(12));
            var nameLength = BinaryPrimitives.ReadUInt16BigEndian(fixedPart.AsSpan(14));
            var extraLength = BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(36));
            if (extraLength > MaxExtraData)
            {
                throw Bad(name, $"snapshot {i}: {extraLength} bytes of extra data exceed the limit of {MaxExtraData}");
            }

            var rest = new byte[extraLength + idLength + nameLength];
            await ReadAsync(file, offset + FixedLength, rest, name, i, cancellationToken);
            var extra = rest.AsSpan(0, (int)extraLength);
            long vmStateSize = BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(32));
            if (extra.Length >= 8)
            {
                vmStateSize = (long)BinaryPrimitives.ReadUInt64BigEndian(extra);
            }

            long? instructions = extra.Length >= 24 && BinaryPrimitives.ReadUInt64BigEndian(extra[16..]) is var icount && icount != ulong.MaxValue
                ? (long)icount
                : null;
            snapshots.Add(new SnapshotInfo(
                Encoding.UTF8.GetString(rest, (int)extraLength, idLength),
                Encoding.UTF8.GetString(rest, (int)extraLength + idLength, nameLength),
                vmStateSize,
                BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(16)),
                BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(20)),
                (long)BinaryPrimitives.ReadUInt64BigEndian(fixedPart.AsSpan(24)),
                instructions));
            offset += (FixedLength + rest.Length + 7) & ~7L;
        }

        return snapshots;
    }

    static async Task ReadAsync(BlockNode file, long offset, byte[] buffer, string name, int index, CancellationToken cancellationToken)
    {
        if (offset < 0 || offset > file.Length - buffer.Length)
        {
            throw Bad(name, $"snapshot {index} (at offset {offset}) runs past the end of the file ({file.Length} bytes)");
        }

        await file.ReadAsync(offset, buffer, cancellationToken);
    }

    static IOException Bad(string name, string detail) => new($"qcow2 image '{name}': snapshot table: {detail}");
}
