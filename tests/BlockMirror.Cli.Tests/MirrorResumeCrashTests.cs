using System.Globalization;
using BlockMirror.CrashWriter;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// A mirror with a write-intent log under a live writer (BlockMirror.CrashWriter's mirror mode) is killed with
/// SIGKILL at a random moment, then <c>blockmirror mirror --resume</c> continues it: the target must equal the
/// source, every write the writer saw acknowledged must be there, and the resumed job must copy no more than the
/// log marks. 20 kills by default, BLOCKMIRROR_SEEDS=100 for the hundred.
/// </summary>
public sealed class MirrorResumeCrashTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-resume-crash-");

    public void Dispose() => _dir.Dispose();

    const long Size = 4 << 20;

    [SkippableFact]
    public async Task A_mirror_killed_at_random_moments_resumes_to_a_target_equal_to_the_source_with_every_acknowledged_write()
    {
        ExternalTool.Require("qemu-img");
        var writer = Path.Combine(AppContext.BaseDirectory, "BlockMirror.CrashWriter.dll");
        Assert.True(File.Exists(writer), $"{writer} is missing");
        long copied = 0, left = 0;
        await Seeds.RunAsync(Seeds.Range(20), async seed =>
        {
            var random = new Random(seed);
            var format = seed % 2 == 0 ? "raw" : "qcow2";
            var source = _dir.File($"source-{seed}.{format}");
            var target = _dir.File($"target-{seed}.{format}");
            var initial = new byte[Size];
            random.NextBytes(initial);
            var raw = _dir.File($"initial-{seed}.raw");
            await File.WriteAllBytesAsync(raw, initial);
            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", "raw", "-O", format, raw, source);
            await ExternalTool.RunCheckedAsync("qemu-img", "create", "-q", "-f", format, target, $"{Size}");

            var lines = await CrashRun.RunAndKillAsync(writer, ["mirror", source, target, seed.ToString(CultureInfo.InvariantCulture)],
                killAfterStep: random.Next(0, 1500), jitterMs: random.Next(0, 20));
            var lastDone = CrashRun.Last(lines, "done ");
            var log = source + ".blockmirror-wil";
            Assert.True(File.Exists(log), $"no write-intent log after the kill (last step done {lastDone})");
            var marked = WriteIntentLogFile.MarkedBytes(log);

            var result = await BlockMirrorCli.RunAsync("mirror", "--json", "--resume", source, target);
            Assert.True(result.ExitCode == 0, result.ToString());
            var offset = MirrorBitmapResyncTests.CopiedBytes(result);
            Assert.True(offset <= marked, $"the resumed job copied {offset} bytes, but the log marked only {marked}");
            copied += offset;
            left += marked;
            Assert.False(File.Exists(log), "a mirror that completed left its write-intent log");
            await QemuImages.AssertIdenticalAsync(source, target, format, format);

            // Every acknowledged write is in the source (so in the target); the step after the last acknowledged one may
            // or may not have landed.
            var model = (byte[])initial.Clone();
            var uncertain = new bool[Size];
            foreach (var op in CrashOps.Generate(seed, Size).TakeWhile(o => o.Index <= lastDone + 1))
            {
                if (op.Kind is not (CrashOpKind.Write or CrashOpKind.WriteZeroes))
                {
                    continue;
                }

                if (op.Index <= lastDone)
                {
                    CrashOps.Apply(op, model, 512);
                }
                else
                {
                    uncertain.AsSpan((int)op.Offset, op.Length).Fill(true);
                }
            }

            var content = _dir.File($"content-{seed}.raw");
            await ExternalTool.RunCheckedAsync("qemu-img", "convert", "-f", format, "-O", "raw", target, content);
            var bytes = await File.ReadAllBytesAsync(content);
            for (var i = 0; i < Size; i++)
            {
                if (!uncertain[i] && bytes[i] != model[i])
                {
                    Assert.Fail($"target byte {i} reads 0x{bytes[i]:x2}, but acknowledged writes made it 0x{model[i]:x2} (last step done: {lastDone})");
                }
            }

            foreach (var file in new[] { source, target, raw, content })
            {
                File.Delete(file);
            }
        });

        // The kills must leave something to resume and the log must spare some of it, or the test proves little.
        Assert.True(left > 0, "no kill left anything marked");
    }
}
