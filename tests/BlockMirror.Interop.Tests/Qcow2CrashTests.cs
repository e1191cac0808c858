using BlockMirror.CrashWriter;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.TestKit;

namespace BlockMirror.Interop.Tests;

/// <summary>
/// A writer process (BlockMirror.CrashWriter) writes, zeroes, discards and flushes a qcow2 image and is
/// killed with SIGKILL at a random moment, a hundred times. Each time <c>qemu-img check</c> must find no
/// corruption (leaked clusters are allowed: refcounts are written before what points at them), and every
/// byte that the writer's last completed flush covered, and that no later step may have touched, must read
/// back as it was.
/// </summary>
public sealed class Qcow2CrashTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-qcow2-crash-");

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task A_writer_killed_at_random_moments_leaves_no_corruption_and_keeps_every_flushed_write()
    {
        ExternalTool.Require("qemu-img");
        var writer = Path.Combine(AppContext.BaseDirectory, "BlockMirror.CrashWriter.dll");
        Assert.True(File.Exists(writer), $"{writer} is missing");
        var leaky = 0;
        var flushedSeen = 0;
        var runs = 0;
        await Seeds.RunAsync(Seeds.Range(100), async seed =>
        {
            runs++;
            var clusterSize = seed % 3 == 0 ? 512 : 4096;
            var size = clusterSize == 512 ? 2L << 20 : 8L << 20;
            var path = _dir.File($"crash-{seed}.qcow2");
            Qcow2Create.Create(path, new Qcow2CreateOptions { Size = size, ClusterSize = clusterSize });

            var random = new Random(seed);
            var (lastDone, lastFlush) = await RunAndKillAsync(writer, path, seed, killAfterStep: random.Next(20, 250), jitterMs: random.Next(0, 10));
            var check = await ExternalTool.RunAsync("qemu-img", ["check", "-f", "qcow2", path]);
            Assert.True(check.ExitCode is 0 or 3, $"qemu-img check exited {check.ExitCode} after the kill (done {lastDone}, flushed {lastFlush}):\n{check.StandardOutput}{check.StandardError}");
            if (check.ExitCode == 3)
            {
                leaky++;
            }

            // What the last flush made durable; bytes that a later, possibly started step may touch are not judged.
            var model = new byte[size];
            var uncertain = new bool[size];
            foreach (var op in CrashOps.Generate(seed, size).TakeWhile(o => o.Index <= lastDone + 1))
            {
                if (op.Index <= lastFlush)
                {
                    CrashOps.Apply(op, model, clusterSize);
                }
                else
                {
                    var (start, end) = CrashOps.Touched(op, size, clusterSize);
                    uncertain.AsSpan((int)start, (int)(end - start)).Fill(true);
                }
            }

            if (lastFlush >= 0)
            {
                flushedSeen++;
            }

            var raw = _dir.File($"crash-{seed}.raw");
            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-O", "raw", path, raw);
            var content = await File.ReadAllBytesAsync(raw);
            for (var i = 0; i < size; i++)
            {
                if (!uncertain[i] && content[i] != model[i])
                {
                    Assert.Fail($"byte {i} reads 0x{content[i]:x2}, but the flush after step {lastFlush} made it 0x{model[i]:x2} (last step done: {lastDone})");
                }
            }

            File.Delete(path);
            File.Delete(raw);
        });

        // The kills must land while the writer works, with flushes behind it, or the test proves nothing.
        Assert.True(flushedSeen * 2 >= runs, $"only {flushedSeen} of {runs} runs got past a flush before the kill");
        Assert.True(leaky < runs, "every run leaked");
    }

    /// <summary>Runs the writer until step <paramref name="killAfterStep"/> and a little longer, kills it; returns the last step done and the last flush it reported.</summary>
    static async Task<(int LastDone, int LastFlush)> RunAndKillAsync(string writer, string image, int seed, int killAfterStep, int jitterMs)
    {
        var lines = await CrashRun.RunAndKillAsync(writer, [image, seed.ToString(System.Globalization.CultureInfo.InvariantCulture)], killAfterStep, jitterMs);
        return (CrashRun.Last(lines, "done "), CrashRun.Last(lines, "flushed "));
    }
}
