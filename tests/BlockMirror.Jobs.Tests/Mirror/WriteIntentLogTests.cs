using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs.Mirror;
using BlockMirror.TestKit;

namespace BlockMirror.Jobs.Tests.Mirror;

/// <summary>
/// The write-intent log's two promises, read back from its file as a crash would find it: a region is marked on
/// disk before the first write into it may proceed, and a region is cleared only after it stayed idle across two
/// looks (so the flush between them covers its copies), never while a write into it runs.
/// </summary>
public sealed class WriteIntentLogTests : IAsyncLifetime
{
    const long Size = 1 << 20;
    const long Region = 64 * 1024;

    readonly TempDirectory _dir = new("blockmirror-wil-");
    readonly BlockGraph _graph = new();
    BlockNode _source = null!;
    BlockNode _target = null!;

    public async Task InitializeAsync()
    {
        await File.WriteAllBytesAsync(_dir.File("source.raw"), new byte[Size]);
        await File.WriteAllBytesAsync(_dir.File("target.raw"), new byte[Size]);
        _source = await ImageFiles.OpenAsync(_graph, new ImageOpenOptions(_dir.File("source.raw"), "raw"));
        _target = await ImageFiles.OpenAsync(_graph, new ImageOpenOptions(_dir.File("target.raw"), "raw"));
    }

    public async Task DisposeAsync()
    {
        await _graph.DisposeAsync();
        _dir.Dispose();
    }

    WriteIntentLog Create(Func<long, long, bool> initial) =>
        WriteIntentLog.Create(WriteIntentLog.PathFor(_source)!, _source, _target, Region, initial);

    /// <summary>What a crash right now would leave: the log as a resume reopens it.</summary>
    long MarkedOnDisk()
    {
        using var reopened = WriteIntentLog.Open(WriteIntentLog.PathFor(_source)!, _source, _target);
        return reopened.MarkedBytes;
    }

    [Fact]
    public async Task The_first_write_into_a_clean_region_waits_until_its_mark_is_on_disk_and_concurrent_ones_share_it()
    {
        using var log = Create((_, _) => false);
        Assert.Equal(0, MarkedOnDisk());

        var writes = Enumerable.Range(0, 8).Select(i => log.BeginWriteAsync(3 * Region + i * 512, 512).AsTask()).ToArray();
        await Task.WhenAll(writes);
        Assert.Equal(Region, MarkedOnDisk());

        // Marked now: the next write does not wait.
        var next = log.BeginWriteAsync(3 * Region + 4096, 4096).AsTask();
        Assert.True(next.IsCompletedSuccessfully);
        log.EndWrite(3 * Region + 4096, 4096);
        foreach (var i in Enumerable.Range(0, 8))
        {
            log.EndWrite(3 * Region + i * 512, 512);
        }
    }

    [Fact]
    public async Task A_region_is_cleared_after_two_idle_looks_and_never_while_a_write_into_it_runs()
    {
        using var log = Create((offset, _) => offset < 2 * Region);
        Assert.Equal(2 * Region, MarkedOnDisk());

        // A write into region 1 runs across both looks: region 0 goes, region 1 stays.
        await log.BeginWriteAsync(Region, 512);
        Assert.Null(log.ClearIdle((_, _) => true));
        Assert.Equal(2 * Region, MarkedOnDisk());
        await log.ClearIdle((_, _) => true)!;
        Assert.Equal(Region, MarkedOnDisk());
        log.EndWrite(Region, 512);

        // Ended, but started after the first look: one more pair of looks.
        Assert.Null(log.ClearIdle((_, _) => true));
        await log.ClearIdle((_, _) => true)!;
        Assert.Equal(0, MarkedOnDisk());

        // A region the job still has dirty (clean says no) is never cleared.
        await log.BeginWriteAsync(5 * Region, 512);
        log.EndWrite(5 * Region, 512);
        Assert.Null(log.ClearIdle((offset, _) => offset != 5 * Region));
        Assert.Null(log.ClearIdle((offset, _) => offset != 5 * Region));
        Assert.Equal(Region, MarkedOnDisk());
    }

    [Fact]
    public async Task A_region_no_guest_wrote_is_cleared_after_one_look_and_a_flush_and_one_a_guest_wrote_is_not()
    {
        using var log = Create((offset, _) => offset < 3 * Region);
        Assert.Equal(3 * Region, MarkedOnDisk());

        // Region 1 has had a guest write (ended); region 2 is still being copied (clean says no).
        await log.BeginWriteAsync(Region, 512);
        log.EndWrite(Region, 512);
        var settled = log.SettledUntouched((offset, _) => offset != 2 * Region);
        Assert.Equal([0], settled);

        // A guest write into a settled region between the look and the clear keeps it.
        var again = log.SettledUntouched((offset, _) => offset == 0)!;
        await log.BeginWriteAsync(0, 512);
        Assert.Null(log.ClearUntouched(again));
        log.EndWrite(0, 512);
        Assert.Equal(3 * Region, MarkedOnDisk());

        // Region 0 now has a guest write behind it too: only the lazy clearing's two looks take it (and region 1).
        Assert.Null(log.SettledUntouched((offset, _) => offset != 2 * Region));
        Assert.Null(log.ClearIdle((offset, _) => offset != 2 * Region));
        await log.ClearIdle((offset, _) => offset != 2 * Region)!;
        Assert.Equal(Region, MarkedOnDisk());

        // Region 2, untouched by guests, goes at the first look once the copy has settled it.
        await log.ClearUntouched(log.SettledUntouched((_, _) => true)!)!;
        Assert.Equal(0, MarkedOnDisk());
    }

    [Fact]
    public void A_crashed_job_s_log_is_not_overwritten_and_a_resume_checks_it_is_of_these_nodes()
    {
        using (Create((_, _) => true))
        {
        }

        var ex = Assert.Throws<JobException>(() => Create((_, _) => true));
        Assert.Contains("resume that mirror, or remove the file", ex.Message, StringComparison.Ordinal);
        var wrongTarget = Assert.Throws<JobException>(() => WriteIntentLog.Open(WriteIntentLog.PathFor(_source)!, _source, _source));
        Assert.Contains("not onto", wrongTarget.Message, StringComparison.Ordinal);
        Assert.Equal(Size, MarkedOnDisk());
    }
}
