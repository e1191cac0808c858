using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
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
    switch (op.Kind)
    {
        case CrashOpKind.Write:
            buffer.AsSpan(0, op.Length).Fill(op.Pattern);
            await disk.WriteAsync(op.Offset, buffer.AsMemory(0, op.Length));
            break;
        case CrashOpKind.WriteZeroes:
            await disk.WriteZeroesAsync(op.Offset, op.Length, op.Index % 2 == 0 ? RequestFlags.MayUnmap : RequestFlags.None);
            break;
        case CrashOpKind.Discard:
            await disk.DiscardAsync(op.Offset, op.Length);
            break;
        case CrashOpKind.Flush:
            await disk.FlushAsync();
            await output.WriteLineAsync($"flushed {op.Index}");
            break;
    }

    await output.WriteLineAsync($"done {op.Index}");
}

return 0;
