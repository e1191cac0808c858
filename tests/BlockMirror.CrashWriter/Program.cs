using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.CrashWriter;

// crash-writer IMAGE SEED: runs CrashOps.Generate(SEED) on the qcow2 IMAGE until it is killed. Prints
// "ready" once the image is open, "done N" after step N completed and "flushed N" after flush step N.
// crash-writer mirror SOURCE TARGET SEED: see MirrorMode.
if (args is ["mirror", var mirrorSource, var mirrorTarget, var mirrorSeed])
{
    return await MirrorMode.RunAsync(mirrorSource, mirrorTarget, int.Parse(mirrorSeed, System.Globalization.CultureInfo.InvariantCulture));
}

if (args.Length != 2 || !int.TryParse(args[1], out var seed))
{
    Console.Error.WriteLine("usage: crash-writer IMAGE SEED");
    return 2;
}

var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
await using var graph = new BlockGraph();
var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(args[0], "qcow2", Discard: FileDiscardMode.Unmap));
var disk = graph.AttachRoot(node, new RootParent("crash-writer"));
var buffer = new byte[512 * 128];
await output.WriteLineAsync("ready");
foreach (var op in CrashOps.Generate(seed, node.Length))
{
    await CrashOps.RunAsync(disk, op, buffer);
    if (op.Kind == CrashOpKind.Flush)
    {
        await output.WriteLineAsync($"flushed {op.Index}");
    }

    await output.WriteLineAsync($"done {op.Index}");
}

return 0;
