using System.Text.Json.Nodes;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>cache.direct</c> on qemu-storage-daemon 7.2 and on <c>blockmirror serve</c>: whether the image file is really
/// opened with O_DIRECT (read from the daemon's <c>/proc/PID/fdinfo</c>), and what <c>query-named-block-nodes</c>
/// reports for each node. An inline child takes its parent's setting unless it sets its own, as QEMU's
/// bdrv_inherited_options passes it down.
/// </summary>
public sealed class CacheDirectDifferentialTests : IDisposable
{
    /// <summary>O_DIRECT in an fdinfo's octal flags (x86-64).</summary>
    const int ODirect = 0x4000;

    // On disk: tmpfs refuses O_DIRECT.
    readonly TempDirectory _dir = TempDirectory.OnDisk("blockmirror-cache-direct-");

    public void Dispose() => _dir.Dispose();

    /// <summary>The nodes' options (IMAGE stands for the image's path); what both daemons must show.</summary>
    public static TheoryData<string, string> Cases => new()
    {
        { "driver=qcow2,node-name=disk,file.driver=file,file.filename=IMAGE", "file direct=False; qcow2 direct=False; O_DIRECT=False" },
        { "driver=qcow2,node-name=disk,file.driver=file,file.filename=IMAGE,cache.direct=on", "file direct=True; qcow2 direct=True; O_DIRECT=True" },
        { "driver=qcow2,node-name=disk,file.driver=file,file.filename=IMAGE,file.cache.direct=on", "file direct=True; qcow2 direct=False; O_DIRECT=True" },
        { "driver=qcow2,node-name=disk,file.driver=file,file.filename=IMAGE,cache.direct=on,file.cache.direct=off", "file direct=False; qcow2 direct=True; O_DIRECT=False" },
        { "driver=file,node-name=f,filename=IMAGE,cache.direct=on|driver=qcow2,node-name=disk,file=f", "file direct=True; qcow2 direct=False; O_DIRECT=True" },
    };

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public async Task Both_daemons_open_and_report_cache_direct_alike(string nodes, string expected)
    {
        var daemons = new[] { DifferentialDaemon.Qsd(), DifferentialDaemon.Ours() };
        var outcomes = new string[2];
        for (var i = 0; i < daemons.Length; i++)
        {
            var dir = Directory.CreateDirectory(Path.Combine(_dir.Path, daemons[i].Name)).FullName;
            var image = $"{dir}/disk.qcow2";
            File.Delete(image);
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", "qcow2", image, "8M");
            var blockdevs = nodes.Replace("IMAGE", image, StringComparison.Ordinal).Split('|').SelectMany(n => new[] { "--blockdev", n }).ToArray();
            await daemons[i].RunAsync(dir, blockdevs, "disk", async (qmp, _) =>
            {
                var reported = (await qmp.ExecuteAsync("query-named-block-nodes"))!.AsArray()
                    .Select(n => $"{(string?)n!["drv"]} direct={(bool)n["cache"]!["direct"]!}")
                    .Order(StringComparer.Ordinal);
                outcomes[i] = $"{string.Join("; ", reported)}; O_DIRECT={OpenedDirect(image)}";
            });
        }

        Assert.Equal(expected, outcomes[0]);
        Assert.Equal(outcomes[0], outcomes[1]);
    }

    /// <summary>Whether another process holds <paramref name="path"/> open, every descriptor of it with O_DIRECT.</summary>
    static bool OpenedDirect(string path)
    {
        var flags = new List<int>();
        foreach (var process in Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out var pid) && pid != Environment.ProcessId))
        {
            try
            {
                foreach (var fd in Directory.EnumerateFileSystemEntries(Path.Combine(process, "fd")))
                {
                    if (new FileInfo(fd).LinkTarget == path)
                    {
                        var line = File.ReadLines(Path.Combine(process, "fdinfo", Path.GetFileName(fd))).First(l => l.StartsWith("flags:", StringComparison.Ordinal));
                        flags.Add(Convert.ToInt32(line["flags:".Length..].Trim(), 8));
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // A process that ended while being looked at, or one we may not look into.
            }
        }

        Assert.NotEmpty(flags);
        return flags.TrueForAll(f => (f & ODirect) != 0);
    }
}
