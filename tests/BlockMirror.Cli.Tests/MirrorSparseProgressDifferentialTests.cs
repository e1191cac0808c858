using System.Globalization;
using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// What a mirror of a sparse source reports as its work (<c>len</c>, <c>offset</c>) and leaves on a fresh sparse
/// target, on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: 64 MiB virtual holding 3 MiB of data in
/// three extents, target a hole of the same size. QEMU's len counts the bytes it dirtied; it dirties by
/// allocation, and a raw file is allocated everywhere to it (file-posix answers "allocated" without looking),
/// so its len for a raw source is the virtual size, and without discard=unmap on the target it writes zeroes
/// over every hole (allocating them). Ours dirties only what does not read as zeroes when the target already
/// does: len is the data. Where they agree (a qcow2 source, target with discard=unmap) both report the data.
/// </summary>
public sealed class MirrorSparseProgressDifferentialTests : IDisposable
{
    const long Size = 64L << 20;
    const long Data = 3L << 20;

    readonly TempDirectory _dir = new("blockmirror-sparse-progress-");

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task A_qcow2_source_onto_a_target_with_discard_unmap_reports_its_data_as_len_on_both_daemons()
    {
        var theirs = await MirrorAsync(DifferentialDaemon.Qsd(), "qcow2", unmap: true);
        var ours = await MirrorAsync(DifferentialDaemon.Ours(), "qcow2", unmap: true);

        Assert.Equal(theirs.Events, ours.Events);
        Assert.Equal((Data, Data), (theirs.Len, theirs.Offset));
        Assert.Equal((theirs.Len, theirs.Offset), (ours.Len, ours.Offset));
        Assert.InRange(theirs.TargetAllocated, Data, Data + (1 << 20));
        Assert.InRange(ours.TargetAllocated, Data, Data + (1 << 20));
    }

    [SkippableFact]
    public async Task A_raw_source_onto_a_fresh_target_counts_the_virtual_size_and_allocates_it_on_qemu_and_only_the_data_on_ours()
    {
        var theirs = await MirrorAsync(DifferentialDaemon.Qsd(), "raw", unmap: false);
        var ours = await MirrorAsync(DifferentialDaemon.Ours(), "raw", unmap: false);

        Assert.Equal(theirs.Events, ours.Events);
        // Pinned difference (README, "Sparse disks"): QEMU 7.2 dirties and writes the whole disk.
        Assert.Equal((Size, Size), (theirs.Len, theirs.Offset));
        Assert.True(theirs.TargetAllocated >= Size, $"qemu-storage-daemon 7.2 left {theirs.TargetAllocated} bytes allocated");
        Assert.Equal((Data, Data), (ours.Len, ours.Offset));
        Assert.InRange(ours.TargetAllocated, Data, Data + (1 << 20));
    }

    [SkippableFact]
    public async Task A_1_TiB_sparse_raw_source_mirrors_its_data_only_in_bounded_memory_on_ours()
    {
        // Ours only: qemu-storage-daemon 7.2 would write zeroes over the whole terabyte (allocating it).
        const long size = 1L << 40;
        var dir = Path.Combine(_dir.Path, "tib");
        Directory.CreateDirectory(dir);
        await MakeSourceAsync(dir, "raw", size);
        MakeHole($"{dir}/target.raw", size);

        var result = await MirrorAsync(DifferentialDaemon.Ours(), dir, "raw", unmap: false);

        Assert.Equal((Data, Data), (result.Len, result.Offset));
        Assert.Equal(Data, result.TargetWritten);
        Assert.InRange(result.TargetAllocated, Data, Data + (1 << 20));
        // 1 TiB is 16 Mi chunks of 64 KiB: state kept per chunk (even 16 bytes each) would take 256 MiB. The two
        // bitmaps take 2 MiB each, and what the daemon touches of them follows the data.
        Assert.InRange(result.PeakRssMiB, 1, 200);
        await QemuImages.AssertIdenticalAsync($"{dir}/source.raw", $"{dir}/target.raw");
    }

    sealed record Outcome(List<string> Events, long Len, long Offset, long TargetWritten, long TargetAllocated, double PeakRssMiB);

    async Task<Outcome> MirrorAsync(DifferentialDaemon daemon, string sourceFormat, bool unmap)
    {
        var dir = Path.Combine(_dir.Path, $"{daemon.Name}-{sourceFormat}-{unmap}");
        Directory.CreateDirectory(dir);
        await MakeSourceAsync(dir, sourceFormat, Size);
        MakeHole($"{dir}/target.raw", Size);
        var outcome = await MirrorAsync(daemon, dir, sourceFormat, unmap);
        await QemuImages.AssertIdenticalAsync($"{dir}/source.{sourceFormat}", $"{dir}/target.raw", sourceFormat);
        return outcome;
    }

    static async Task<Outcome> MirrorAsync(DifferentialDaemon daemon, string dir, string sourceFormat, bool unmap)
    {
        long len = -1, offset = -1, written = -1;
        double peak = 0;
        var events = await daemon.RunAsync(dir,
            ["--blockdev", $"driver={sourceFormat},node-name=src,file.driver=file,file.filename={dir}/source.{sourceFormat}"],
            "src", async (qmp, _) =>
            {
                // discard=unmap on both nodes: QEMU asks the node the job writes to whether it may unmap.
                JsonObject file = new() { ["driver"] = "file", ["node-name"] = "tgt-file", ["filename"] = $"{dir}/target.raw" };
                JsonObject raw = new() { ["driver"] = "raw", ["node-name"] = "tgt", ["file"] = "tgt-file" };
                if (unmap)
                {
                    (file["discard"], raw["discard"]) = ("unmap", "unmap");
                }

                await qmp.ExecuteAsync("blockdev-add", file);
                await qmp.ExecuteAsync("blockdev-add", raw);
                await qmp.ExecuteAsync("blockdev-mirror", new JsonObject { ["job-id"] = "m", ["device"] = "src", ["target"] = "tgt", ["sync"] = "full" });
                await qmp.WaitEventAsync("BLOCK_JOB_READY", timeout: TimeSpan.FromSeconds(60));
                var job = Assert.Single((await qmp.ExecuteAsync("query-block-jobs"))!.AsArray())!.AsObject();
                (len, offset) = ((long)job["len"]!, (long)job["offset"]!);
                var stats = (await qmp.ExecuteAsync("query-blockstats", new JsonObject { ["query-nodes"] = true }))!.AsArray();
                written = (long)stats.Single(s => (string?)s!["node-name"] == "tgt")!["stats"]!["wr_bytes"]!;
                peak = PeakRssMiB($"{dir}/qmp.sock");
                await qmp.ExecuteAsync("block-job-complete", new JsonObject { ["device"] = "m" });
                await DifferentialDaemon.WaitJobGoneAsync(qmp);
            });
        return new Outcome(events, len, offset, written, await QemuImages.AllocatedBytesAsync($"{dir}/target.raw"), peak);
    }

    /// <summary>A source of <paramref name="size"/> bytes that is one hole but for three 1 MiB extents of data (the first 4 KiB included: qemu-img create would allocate them).</summary>
    static async Task MakeSourceAsync(string dir, string format, long size)
    {
        var raw = $"{dir}/source.raw";
        MakeHole(raw, size);
        var middle = size / 3 / (1 << 20) * (1 << 20);
        await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", $"write -P 0x22 {middle} 1M", "-c", $"write -P 0x33 {size - (1 << 20)} 1M", raw);
        if (format == "qcow2")
        {
            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, $"{dir}/source.qcow2");
            File.Delete(raw);
        }
    }

    /// <summary>A file of <paramref name="size"/> bytes that is one hole (qemu-img create allocates the first 4 KiB).</summary>
    static void MakeHole(string path, long size)
    {
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write);
        RandomAccess.SetLength(handle, size);
    }

    /// <summary>VmHWM of the daemon whose command line names <paramref name="monitor"/>, in MiB.</summary>
    static double PeakRssMiB(string monitor)
    {
        foreach (var process in Directory.EnumerateDirectories("/proc"))
        {
            string cmdline;
            try
            {
                cmdline = File.ReadAllText($"{process}/cmdline");
                if (!cmdline.Contains(monitor, StringComparison.Ordinal))
                {
                    continue;
                }

                var line = File.ReadLines($"{process}/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }

        throw new InvalidOperationException($"no process names {monitor}");
    }
}
