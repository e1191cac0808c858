using BlockMirror.Block.Io;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The mirror's knowledge of where its target reads zeroes: zero ranges of the source are sent only where the
/// target may hold other bytes, and never skipped where it might.
/// </summary>
/// <remarks>
/// The targets here ignore discards (qemu-storage-daemon's default, discard=ignore), so the job cannot zero
/// the whole target cheaply first: unless the target reads as zeroes everywhere, every chunk is dirtied and
/// the source's zero chunks become write-zeroes, which is where the zero map decides.
/// </remarks>
public sealed class MirrorTargetZeroesTests
{
    const long Chunk = MirrorRig.Chunk;

    static long WriteZeroesSent(MirrorRig rig) => rig.TargetMemory.Statistics.Operations(BlockOperation.WriteZeroes);

    [Fact]
    public async Task Zero_chunks_of_the_source_are_not_sent_where_the_target_reads_zeroes_already()
    {
        await using var rig = await MirrorRig.CreateAsync();
        // One chunk of old bytes keeps the target from reading as zeroes everywhere: every chunk is dirtied.
        await rig.TargetMemory.WriteAsync(0, Filled(0xEE));
        var target = await DiscardIgnoredFilter.OpenAsync(rig.Graph, "dst-ignore", rig.Target);

        var job = await MirrorJob.StartAsync(rig.Manager, rig.Graph, rig.Source, target, MirrorRig.Options());
        var ready = await ReadyLenAsync(rig, job);

        await rig.AssertTargetEqualsSourceAsync();
        Assert.Equal(0, WriteZeroesSent(rig));
        // The skipped chunks still count as done: the whole disk went through the loop.
        Assert.Equal(MirrorRig.DefaultSize, ready);
    }

    [Fact]
    public async Task A_zero_range_over_known_and_unknown_chunks_is_written_only_over_the_unknown_ones()
    {
        await using var rig = await MirrorRig.CreateAsync();
        // Old bytes in the first chunk of the source's zero range [512 KiB, 640 KiB): only that chunk needs zeroes.
        await rig.TargetMemory.WriteAsync(512 * 1024, Filled(0xEE));
        var target = await DiscardIgnoredFilter.OpenAsync(rig.Graph, "dst-ignore", rig.Target);

        var job = await MirrorJob.StartAsync(rig.Manager, rig.Graph, rig.Source, target, MirrorRig.Options() with { BufSize = 16 * Chunk });
        await ReadyLenAsync(rig, job);

        await rig.AssertTargetEqualsSourceAsync();
        Assert.Equal(Chunk, rig.TargetMemory.Statistics.Bytes(BlockOperation.WriteZeroes));
    }

    [Fact]
    public async Task Zero_chunks_over_old_bytes_are_written_when_target_is_zero_is_not_given()
    {
        // The safety case: a target holding garbage everywhere, no assertion from the user.
        await using var rig = await MirrorRig.CreateAsync(targetZeroInit: false);
        var target = await DiscardIgnoredFilter.OpenAsync(rig.Graph, "dst-ignore", rig.Target);

        var job = await MirrorJob.StartAsync(rig.Manager, rig.Graph, rig.Source, target, MirrorRig.Options());
        await ReadyLenAsync(rig, job);

        await rig.AssertTargetEqualsSourceAsync();
        Assert.True(WriteZeroesSent(rig) > 0);
    }

    [Fact]
    public async Task Target_is_zero_is_the_users_word_so_old_bytes_under_the_sources_zeroes_stay()
    {
        // As QEMU 10.1 documents it: true on a target that does not read as zeroes corrupts the copy.
        await using var rig = await MirrorRig.CreateAsync(targetZeroInit: false);
        var target = await DiscardIgnoredFilter.OpenAsync(rig.Graph, "dst-ignore", rig.Target);

        var job = await MirrorJob.StartAsync(rig.Manager, rig.Graph, rig.Source, target, MirrorRig.Options() with { TargetIsZero = true });
        await ReadyLenAsync(rig, job);

        Assert.Equal(0, WriteZeroesSent(rig));
        var copy = await MirrorRig.ReadAllAsync(rig.TargetMemory);
        // The data arrived; the zero range between the data kept the target's old bytes.
        MirrorRig.AssertSameBytes(rig.Content[..(512 * 1024)], copy[..(512 * 1024)], "data");
        Assert.All(copy.AsSpan(512 * 1024, 128 * 1024).ToArray(), b => Assert.Equal(0xA5, b));
    }

    [Fact]
    public async Task A_data_write_to_a_known_zero_chunk_makes_the_next_zero_write_there_go_out()
    {
        // Write-blocking: a guest write of data lands on the target, so the chunk is no longer known zero,
        // and zeroes written over it afterwards must reach the target.
        await using var rig = await MirrorRig.CreateAsync();
        var job = await WriteBlockingReadyAsync(rig);
        var zeroChunk = 768 * 1024L;
        var before = WriteZeroesSent(rig);

        await rig.Vm.WriteZeroesAsync(zeroChunk, Chunk);
        Assert.Equal(before, WriteZeroesSent(rig));

        await rig.Vm.WriteAsync(zeroChunk, Filled(0x42));
        await rig.Vm.WriteZeroesAsync(zeroChunk, Chunk);
        Assert.Equal(before + 1, WriteZeroesSent(rig));

        // Zeroes again over the chunk those zeroes made known zero: nothing to send.
        await rig.Vm.WriteZeroesAsync(zeroChunk, Chunk);
        Assert.Equal(before + 1, WriteZeroesSent(rig));

        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    [Fact]
    public async Task A_partial_zero_write_does_not_make_its_chunk_known_zero()
    {
        await using var rig = await MirrorRig.CreateAsync();
        var job = await WriteBlockingReadyAsync(rig);
        var chunk = 768 * 1024L;
        await rig.Vm.WriteAsync(chunk, Filled(0x42));
        var before = WriteZeroesSent(rig);

        // Half a chunk of zeroes: the other half holds data, so the chunk is not zero afterwards.
        await rig.Vm.WriteZeroesAsync(chunk, Chunk / 2);
        await rig.Vm.WriteZeroesAsync(chunk + Chunk / 2, Chunk / 2);
        Assert.Equal(before + 2, WriteZeroesSent(rig));

        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        await rig.AssertTargetEqualsSourceAsync();
    }

    static byte[] Filled(byte value) => Enumerable.Repeat(value, (int)Chunk).ToArray();

    /// <summary>A mirror whose guest writes block, READY; its target read zeroes at the start (a fresh memory disk).</summary>
    static async Task<MirrorJob> WriteBlockingReadyAsync(MirrorRig rig)
    {
        var job = await rig.StartAsync(MirrorRig.Options() with { CopyMode = MirrorCopyMode.WriteBlocking });
        await MirrorTestRunner.WaitReadyAsync(rig.Manager, job);
        return job;
    }

    static async Task<long> ReadyLenAsync(MirrorRig rig, MirrorJob job)
    {
        await MirrorTestRunner.CompleteWhenReadyAsync(rig.Manager, job);
        return Assert.Single(rig.Log.Events.OfType<BlockJobReadyEvent>()).Len;
    }
}
