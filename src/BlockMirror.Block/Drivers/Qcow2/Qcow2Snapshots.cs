using System.Buffers.Binary;
using System.Text;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>One internal snapshot as <c>qemu-img info</c> lists it (QAPI's SnapshotInfo).</summary>
public sealed record SnapshotInfo(string Id, string Name, long VmStateSize, long DateSeconds, long DateNanoseconds, long VmClockNanoseconds, long? InstructionCount);

/// <summary>
/// Reads a qcow2 image's snapshot table (docs/interop/qcow2.txt, "Snapshot table") when the image is opened,
/// as QEMU does (qcow2_read_snapshots): an image whose table QEMU refuses is refused at open by every
/// command, with QEMU's message. The snapshots themselves are kept intact, not used.
/// <code>
///  0 l1_table_offset (8)   8 l1_size (4)   12 id_str_size (2)   14 name_size (2)
/// 16 date_sec (4)  20 date_nsec (4)  24 vm_clock_nsec (8)  32 vm_state_size (4)  36 extra_data_size (4)
/// 40 extra data: vm_state_size_large (8), disk_size (8), icount (8), ...; then id_str, name; padded to 8.
/// </code>
/// </summary>
internal static class Qcow2Snapshots
{
    /// <summary>QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA.</summary>
    const int MaxExtraData = 1024;

    /// <summary>QEMU's QCOW_MAX_SNAPSHOTS_SIZE: the whole table, entries and names.</summary>
    const long MaxTableBytes = 1024L * Qcow2Header.MaxSnapshots;

    /// <summary>Reads the table; the header has already checked the count and the offset (QEMU's qcow2_validate_table).</summary>
    public static ValueTask<IReadOnlyList<SnapshotInfo>> ReadAsync(Qcow2Image image, CancellationToken cancellationToken) =>
        ReadAsync(image.ReadClampedAsync, image.Header, image.Name, cancellationToken);

    /// <summary>Reads the table through <paramref name="read"/>, which reads past the end of the file as zeroes.</summary>
    public static async ValueTask<IReadOnlyList<SnapshotInfo>> ReadAsync(Func<long, Memory<byte>, CancellationToken, ValueTask> read, Qcow2Header header,
        string name, CancellationToken cancellationToken)
    {
        if (header.NbSnapshots == 0)
        {
            return [];
        }

        var snapshots = new List<SnapshotInfo>(header.NbSnapshots);
        var offset = header.SnapshotsOffset;
        var fixedPart = new byte[Qcow2Header.SnapshotHeaderLength];
        for (var i = 0; i < header.NbSnapshots; i++)
        {
            offset = (offset + 7) & ~7L;
            await read(offset, fixedPart, cancellationToken).ConfigureAwait(false);
            var idLength = BinaryPrimitives.ReadUInt16BigEndian(fixedPart.AsSpan(12));
            var nameLength = BinaryPrimitives.ReadUInt16BigEndian(fixedPart.AsSpan(14));
            var extraLength = BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(36));
            if (extraLength > MaxExtraData)
            {
                throw new Qcow2Exception(name, $"Too much extra metadata in snapshot table entry {i}", Io.BlockErrno.EFBIG);
            }

            var rest = new byte[extraLength + idLength + nameLength];
            await read(offset + fixedPart.Length, rest, cancellationToken).ConfigureAwait(false);
            offset += fixedPart.Length + rest.Length;
            if (offset - header.SnapshotsOffset > MaxTableBytes)
            {
                throw new Qcow2Exception(name, "Snapshot table is too big", Io.BlockErrno.EFBIG);
            }

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
        }

        return snapshots;
    }
}
