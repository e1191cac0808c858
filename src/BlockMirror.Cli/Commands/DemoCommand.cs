using System.CommandLine;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Raw;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror demo</c>: runs the product on built-in data and verifies the result. Until the mirror
/// job lands this exercises the block layer: a sparse raw image with data, zeroes and holes, its
/// block-status map, and a byte-for-byte read-back.
/// </summary>
static class DemoCommand
{
    public static Command Create()
    {
        var size = new Option<string>("--size") { Description = "Image size (e.g. 64M)", DefaultValueFactory = _ => "64M" };
        var command = new Command("demo", "Run BlockMirror on built-in data and verify the result");
        command.Options.Add(size);
        command.SetAction((parse, cancellationToken) => RunAsync(ByteSize.Parse(parse.GetValue(size)!, "--size"), cancellationToken));
        return command;
    }

    static async Task<int> RunAsync(long size, CancellationToken cancellationToken)
    {
        var directory = Directory.CreateTempSubdirectory("blockmirror-demo-");
        try
        {
            var path = Path.Combine(directory.FullName, "disk.raw");
            FileDriver.CreateFile(path, size);
            await using var graph = new BlockGraph();
            var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path, Discard: FileDiscardMode.Unmap), cancellationToken: cancellationToken).ConfigureAwait(false);
            var disk = await RawDriver.OpenAsync(graph, "disk", file, cancellationToken: cancellationToken).ConfigureAwait(false);
            var user = graph.AttachRoot(disk, new RootParent("demo"));

            // A quarter data, a quarter written zeroes, the rest never written (holes).
            var model = new byte[size];
            Random.Shared.NextBytes(model.AsSpan(0, (int)(size / 4)));
            await user.WriteAsync(0, model.AsMemory(0, (int)(size / 4)), cancellationToken: cancellationToken).ConfigureAwait(false);
            await user.WriteZeroesAsync(size / 4, size / 4, RequestFlags.MayUnmap, cancellationToken).ConfigureAwait(false);
            await user.FlushAsync(cancellationToken).ConfigureAwait(false);

            Console.WriteLine($"image {path} ({ByteSize.Format(size)}), block status:");
            for (long offset = 0; offset < size;)
            {
                var status = await user.GetBlockStatusAsync(offset, size - offset, cancellationToken).ConfigureAwait(false);
                Console.WriteLine($"  {offset,12} +{status.Length,-12} {(status.IsData ? "data" : "zero")}");
                offset += status.Length;
            }

            var readBack = new byte[size];
            await user.ReadAsync(0, readBack, cancellationToken).ConfigureAwait(false);
            var same = readBack.AsSpan().SequenceEqual(model);
            Console.WriteLine(same ? "PASS: the image reads back exactly what was written" : "FAIL: the image differs from what was written");
            return same ? 0 : 1;
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }
}
