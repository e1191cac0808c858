using BlockMirror.Block.Bitmaps;
using BlockMirror.Block.Drivers.Qcow2;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>The on-disk encoding of persistent bitmaps: table entries, serialized data, directory entries.</summary>
public sealed class Qcow2BitmapTableTests
{
    const int ClusterSize = 65536;

    [Theory]
    [InlineData(0UL, true)] // not stored, reads as zeroes
    [InlineData(1UL, true)] // not stored, reads as ones
    [InlineData(0x50000UL, true)] // a stored cluster
    [InlineData(0x50001UL, false)] // "all ones" with an offset
    [InlineData(0x50200UL, false)] // not cluster-aligned
    [InlineData(0x50002UL, false)] // reserved bit 1
    [InlineData(0x50100UL, false)] // reserved bit 8
    [InlineData(0x0100000000050000UL, false)] // bit 56: past the offset range
    [InlineData(0x8000000000050000UL, false)] // bit 63 (an L2 entry's copied flag)
    [InlineData(0x00fffffffffe0000UL, true)] // the highest aligned offset
    public void Table_entries_are_checked_as_qemu_checks_them(ulong entry, bool valid) =>
        Assert.Equal(valid, Qcow2BitmapTable.IsValidEntry(entry, ClusterSize));

    [Theory]
    [InlineData(4L << 20, 16, 16, 8, 1)] // 64 bits
    [InlineData(4L << 20, 9, 16, 1024, 1)] // 8192 bits
    [InlineData((4L << 20) + 1, 16, 16, 9, 1)] // a partial last chunk is a bit
    [InlineData(1L << 30, 9, 12, 262144, 64)] // 4 KiB clusters
    [InlineData(0, 16, 16, 0, 0)]
    public void Data_and_table_sizes_follow_the_disk(long size, int granularityBits, int clusterBits, long dataBytes, long entries)
    {
        Assert.Equal(dataBytes, Qcow2BitmapTable.DataBytes(size, granularityBits));
        Assert.Equal(entries, Qcow2BitmapTable.EntriesFor(size, granularityBits, clusterBits));
    }

    [Fact]
    public void Bit_k_of_byte_j_is_chunk_8j_plus_k_least_significant_first()
    {
        var bitmap = new DirtyBitmap(512, 64 * 512);
        bitmap.SetDirty(0, 1);
        bitmap.SetDirty(9 * 512, 512);
        bitmap.SetDirty(63 * 512, 1);

        var data = Qcow2BitmapTable.Serialize(bitmap);

        Assert.Equal(new byte[] { 0x01, 0x02, 0, 0, 0, 0, 0, 0x80 }, data);
    }

    [Fact]
    public void Bits_past_the_disk_end_are_never_set()
    {
        // 10 chunks: the second byte has 2 bits for the disk and 6 that must stay zero.
        var bitmap = new DirtyBitmap(4096, 10 * 4096 - 100);
        bitmap.SetAll();

        Assert.Equal(new byte[] { 0xff, 0x03 }, Qcow2BitmapTable.Serialize(bitmap));

        var loaded = new DirtyBitmap(4096, 10 * 4096 - 100);
        Qcow2BitmapTable.Deserialize([0xff, 0xff], loaded);
        Assert.Equal(loaded.Length, loaded.DirtyBytes);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Serialized_data_deserializes_to_the_same_chunks(int seed)
    {
        var random = new Random(seed);
        var length = random.NextInt64(1, 1 << 26);
        var bitmap = new DirtyBitmap(4096, length);
        var model = new bool[(length + 4095) / 4096];
        for (var i = 0; i < 200; i++)
        {
            // Long runs (whole bytes of the data) as well as single chunks.
            var offset = random.NextInt64(0, length);
            var run = random.Next(3) == 0 ? random.NextInt64(1, 1 << 20) : random.Next(1, 4096);
            run = Math.Min(run, length - offset);
            bitmap.SetDirty(offset, run);
            for (var c = offset / 4096; c <= (offset + run - 1) / 4096; c++)
            {
                model[c] = true;
            }
        }

        var data = Qcow2BitmapTable.Serialize(bitmap);
        Assert.Equal(Qcow2BitmapTable.DataBytes(length, 12), data.Length);
        for (var c = 0; c < model.Length; c++)
        {
            Assert.Equal(model[c], (data[c / 8] >> (c % 8) & 1) == 1);
        }

        var loaded = new DirtyBitmap(4096, length);
        Qcow2BitmapTable.Deserialize(data, loaded);
        Assert.Equal(bitmap.EnumerateDirtyAreas(), loaded.EnumerateDirtyAreas());
    }

    [Fact]
    public void Table_entries_encode_big_endian_and_pad_to_the_length_asked()
    {
        var bytes = Qcow2BitmapTable.Encode([0x50000UL, 1UL], 24);

        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0 }, bytes);
        Assert.Equal([0x50000UL, 1UL, 0UL], Qcow2BitmapTable.Decode(bytes));
    }

    [Fact]
    public void A_directory_written_reads_back_the_same()
    {
        Qcow2BitmapEntry[] entries =
        [
            new("b0", 0x50000, 1, Qcow2BitmapEntry.FlagAuto, 16),
            new("a name of nineteen", 0x60000, 1, Qcow2BitmapEntry.FlagInUse, 9),
            new("x", 0x70000, 2, 0, 31),
        ];

        var directory = Qcow2BitmapDirectory.Encode(entries);

        // 24 bytes each, the name, padded to 8: 32, 48, 32.
        Assert.Equal(112, directory.Length);
        Assert.Equal(48, Qcow2BitmapDirectory.EntrySize("a name of nineteen"));
        var read = new List<Qcow2BitmapEntry>();
        Assert.Null(Qcow2BitmapDirectory.Parse(directory, 3, ClusterSize, 4 << 20, read));
        Assert.Equal(entries, read);
    }

    [Theory]
    [InlineData(2, "More bitmaps found than specified in header extension")]
    [InlineData(4, "Less bitmaps found than specified in header extension")]
    public void A_directory_with_another_count_than_the_header_s_is_refused(int expected, string message)
    {
        var directory = Qcow2BitmapDirectory.Encode([new("a", 0x50000, 1, 0, 16), new("b", 0x60000, 1, 0, 16), new("c", 0x70000, 1, 0, 16)]);

        Assert.Equal(message, Qcow2BitmapDirectory.Parse(directory, expected, ClusterSize, 4 << 20, []));
    }

    [Theory]
    [InlineData(0x50000L, 1, 0u, 16, 4L << 20, true)]
    [InlineData(0L, 1, 0u, 16, 4L << 20, false)] // no table
    [InlineData(0x50200L, 1, 0u, 16, 4L << 20, false)] // unaligned table
    [InlineData(0x50000L, 0, 0u, 16, 4L << 20, false)] // empty table
    [InlineData(0x50000L, 1, 4u, 16, 4L << 20, false)] // a reserved flag
    [InlineData(0x50000L, 1, 0u, 8, 4L << 20, false)] // granularity under 512
    [InlineData(0x50000L, 1, 0u, 32, 4L << 20, false)] // granularity over 2 GiB
    [InlineData(0x50000L, 1, 0u, 9, 1L << 30, false)] // one cluster of data covers 256 MiB at 512 B
    [InlineData(0x50000L, 1, 1u, 9, 1L << 30, true)] // ... unless in use (stale after a resize)
    [InlineData(0x50000L, 8193, 0u, 16, 4L << 20, false)] // over 512 MiB of data
    public void Directory_entries_are_held_to_qemu_s_constraints(long tableOffset, int tableSize, uint flags, int granularityBits, long diskSize, bool valid)
    {
        var directory = Qcow2BitmapDirectory.Encode([new("b0", tableOffset, tableSize, flags, granularityBits)]);

        var fault = Qcow2BitmapDirectory.Parse(directory, 1, ClusterSize, diskSize, []);

        Assert.Equal(valid ? null : "Bitmap 'b0' doesn't satisfy the constraints", fault);
    }

    [Fact]
    public void Extra_data_and_a_cut_entry_are_refused_with_qemu_s_words()
    {
        var directory = Qcow2BitmapDirectory.Encode([new("b0", 0x50000, 1, 0, 16)]);
        var extra = directory.ToArray();
        extra[23] = 8;

        Assert.Equal("Bitmap extra data is not supported", Qcow2BitmapDirectory.Parse([.. extra, .. new byte[8]], 1, ClusterSize, 4 << 20, []));
        Assert.Equal("Broken bitmap directory", Qcow2BitmapDirectory.Parse(directory.AsSpan(0, 20), 1, ClusterSize, 4 << 20, []));
        Assert.Equal("Broken bitmap directory", Qcow2BitmapDirectory.Parse(directory.AsSpan(0, 26), 1, ClusterSize, 4 << 20, []));
    }
}
