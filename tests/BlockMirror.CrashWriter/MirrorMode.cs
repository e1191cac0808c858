using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.CrashWriter;

/// <summary>
/// <c>crash-writer mirror SOURCE TARGET SEED</c>: starts a mirror from SOURCE onto TARGET with a write-intent log,
/// slowed down so that a kill lands anywhere in it (bulk copy, READY, the log's clearing), and writes SOURCE
/// through the mirror's filter as a guest would, the write and write-zeroes steps of <see cref="CrashOps"/>.
/// Prints "ready" once the job runs and "done N" once step N is acknowledged, until it is killed.
/// </summary>
static class MirrorMode
{
    public static async Task<int> RunAsync(string source, string target, int seed)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        await using var graph = new BlockGraph();
        var sourceNode = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(source, FormatOf(source), NodeName: "source"));
        var targetNode = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(target, FormatOf(target), NodeName: "target"));
        var guest = graph.AttachRoot(sourceNode, new RootParent("guest"));
        var manager = new JobManager();
        var random = new Random(seed);
        await MirrorJob.StartAsync(manager, graph, sourceNode, targetNode, new MirrorOptions
        {
            JobId = "crash",
            WriteIntentLog = true,
            Granularity = 64 * 1024,
            BufSize = 128 * 1024,
            Speed = random.Next(8, 64) << 20,
            WriteIntentLogClearInterval = TimeSpan.FromMilliseconds(random.Next(2, 20)),
            CopyMode = seed % 3 == 0 ? MirrorCopyMode.WriteBlocking : MirrorCopyMode.Background,
        });
        await output.WriteLineAsync("ready");

        var buffer = new byte[512 * 128];
        foreach (var op in CrashOps.Generate(seed, sourceNode.Length))
        {
            // Discards leave what the source reads unspecified, and flushes change nothing a kill can lose (the page
            // cache outlives the process): neither has anything for the check to hold on to.
            if (op.Kind is CrashOpKind.Write or CrashOpKind.WriteZeroes)
            {
                await CrashOps.RunAsync(guest, op, buffer);
            }

            await output.WriteLineAsync($"done {op.Index}");
            if (op.Index % 16 == 0)
            {
                // Let the copy and the log's clearing run between bursts of writes, so that later writes meet
                // cleared regions and must mark them again.
                await Task.Delay(random.Next(0, 20));
            }
        }

        return 0;
    }

    static string FormatOf(string path) => path.EndsWith(".qcow2", StringComparison.Ordinal) ? DriverNames.Qcow2 : DriverNames.Raw;
}
