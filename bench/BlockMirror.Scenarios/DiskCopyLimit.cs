using System.Globalization;

namespace BlockMirror.Scenarios;

/// <summary>
/// The disk's copy limit, the yardstick issue 21 measures the mirror against: fio reading <c>bytes</c> of the
/// source file sequentially and writing as many into a new sparse file sequentially, at the same time, both
/// O_DIRECT in 1 MiB requests 16 deep, until both are done and the written file is synced. No copy that reads
/// and writes those bytes on this disk can be faster; the writes allocate as a mirror's onto a new target do
/// (<c>fallocate=none</c>).
/// </summary>
static class DiskCopyLimit
{
    public static double Measure(string source, string scratch, long bytes)
    {
        File.Delete(scratch);
        Runner.Run($"truncate -s {bytes} '{scratch}'");
        Runner.DropCaches();
        var size = string.Create(CultureInfo.InvariantCulture, $"{bytes >> 20}M");
        var seconds = Runner.Measure(
            $"fio --output=/dev/null --ioengine=libaio --direct=1 --bs=1M --iodepth=16 --size={size} " +
            $"--name=read --rw=read --filename='{source}' " +
            $"--name=write --rw=write --filename='{scratch}' --fallocate=none --end_fsync=1").Seconds;
        File.Delete(scratch);
        return seconds;
    }
}
