using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror bench</c>: <c>qemu-img bench</c>'s request generator over our image layer, with its
/// options, defaults and output, so the two can be run on the same file with the same arguments and their
/// times compared (bench/README.md). Request i goes to <c>(offset + i * step) mod size</c>, depth requests in
/// flight; a step of a few blocks that shares no factor with the image's block count visits the blocks in
/// a scattered order, which is how the benchmarks get "random" I/O that both tools issue identically.
/// </summary>
static class BenchCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "Image file" };
        var count = new Option<int>("--count", "-c") { Description = "Number of requests", DefaultValueFactory = _ => 75000 };
        var depth = new Option<int>("--depth", "-d") { Description = "Requests in flight", DefaultValueFactory = _ => 64 };
        var format = new Option<string?>("--format", "-f") { Description = "Image format (default: by extension, else raw)" };
        var offset = new Option<string>("--offset", "-o") { Description = "Offset of the first request", DefaultValueFactory = _ => "0" };
        var size = new Option<string>("--buffer-size", "-s") { Description = "Bytes per request", DefaultValueFactory = _ => "4K" };
        var step = new Option<string?>("--step-size", "-S") { Description = "Offset increment between requests (default: the buffer size)" };
        var cache = new Option<string>("--cache", "-t") { Description = "none (O_DIRECT) or writeback", DefaultValueFactory = _ => "writeback" };
        var write = new Option<bool>("--write", "-w") { Description = "Write instead of read" };
        var pattern = new Option<int>("--pattern") { Description = "Byte written by write requests", DefaultValueFactory = _ => 0 };
        var flushInterval = new Option<int>("--flush-interval") { Description = "Flush after every N requests, once the queue has drained (0: never)" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print nothing but errors" };
        var command = new Command("bench", "Time a stream of reads or writes to an image, as qemu-img bench does")
        {
            file, count, depth, format, offset, size, step, cache, write, pattern, flushInterval, quiet,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunAsync("bench", () =>
        {
            var bufferSize = ByteSize.Parse(parse.GetValue(size)!, "--buffer-size");
            var settings = new BenchSettings(
                parse.GetValue(file)!,
                parse.GetValue(format),
                Positive(parse.GetValue(count), "--count"),
                Positive(parse.GetValue(depth), "--depth"),
                ByteSize.Parse(parse.GetValue(offset)!, "--offset"),
                bufferSize is > 0 and <= 1 << 30 ? (int)bufferSize : throw new UsageException($"--buffer-size must be between 1 and 1G, got {bufferSize}"),
                parse.GetValue(step) is { } s ? ByteSize.Parse(s, "--step-size") : bufferSize,
                parse.GetValue(cache) switch
                {
                    "none" => true,
                    "writeback" => false,
                    var other => throw new UsageException($"--cache: unknown cache mode '{other}' (expected none or writeback)"),
                },
                parse.GetValue(write),
                (byte)parse.GetValue(pattern),
                Math.Max(0, parse.GetValue(flushInterval)),
                parse.GetValue(quiet));
            return RunAsync(settings, cancellationToken);
        }));
        return command;
    }

    static int Positive(int value, string option) => value > 0 ? value : throw new UsageException($"{option} must be positive, got {value}");

    sealed record BenchSettings(string File, string? Format, int Count, int Depth, long Offset, int BufferSize, long Step,
        bool Direct, bool Write, byte Pattern, int FlushInterval, bool Quiet);

    static async Task<int> RunAsync(BenchSettings settings, CancellationToken cancellationToken)
    {
        await using var graph = new BlockGraph();
        var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(settings.File, settings.Format, ReadOnly: !settings.Write,
            Direct: settings.Direct, NodeName: "bench"), cancellationToken);
        var size = node.Length;
        if (size < settings.BufferSize)
        {
            throw new UsageException($"the image ({size} bytes) is smaller than one request ({settings.BufferSize} bytes)");
        }

        if (settings.Offset < 0 || settings.Offset > size - settings.BufferSize)
        {
            throw new UsageException($"--offset {settings.Offset} leaves no room for a {settings.BufferSize}-byte request in a {size}-byte image");
        }

        var edge = graph.AttachRoot(node, new RootParent("bench"));
        var depth = Math.Min(settings.Depth, settings.Count);
        if (!settings.Quiet)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Sending {settings.Count} {(settings.Write ? "write" : "read")} requests, {settings.BufferSize} bytes each, {depth} in parallel (starting at offset {settings.Offset}, step size {settings.Step})"));
        }

        // One aligned buffer per request slot, filled once: the loop itself allocates nothing.
        using var buffers = new AlignedMemory(checked(settings.BufferSize * depth), AlignedMemory.DirectAlignment);
        buffers.Memory.Span.Fill(settings.Pattern);
        var generator = new RequestGenerator(settings, size);
        var clock = Stopwatch.StartNew();
        var batch = settings.FlushInterval > 0 ? settings.FlushInterval : settings.Count;
        for (long done = 0; done < settings.Count; done += batch)
        {
            var end = Math.Min(settings.Count, done + batch);
            var workers = new Task[Math.Min(depth, end - done)];
            for (var w = 0; w < workers.Length; w++)
            {
                workers[w] = WorkAsync(edge, generator, end, buffers.Memory.Slice(w * settings.BufferSize, settings.BufferSize), settings.Write, cancellationToken);
            }

            await Task.WhenAll(workers);
            if (settings.FlushInterval > 0)
            {
                await edge.FlushAsync(cancellationToken);
            }
        }

        clock.Stop();
        if (!settings.Quiet)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Run completed in {clock.Elapsed.TotalSeconds:0.000} seconds."));
        }

        await graph.DetachRootAsync(edge);
        return 0;
    }

    static async Task WorkAsync(NodeEdge edge, RequestGenerator generator, long end, Memory<byte> buffer, bool write, CancellationToken cancellationToken)
    {
        while (generator.TryNext(end, out var offset))
        {
            if (write)
            {
                await edge.WriteAsync(offset, buffer, RequestFlags.None, cancellationToken);
            }
            else
            {
                await edge.ReadAsync(offset, buffer, cancellationToken);
            }
        }
    }

    /// <summary>Hands out request offsets in qemu-img bench's order to any number of workers.</summary>
    sealed class RequestGenerator(BenchSettings settings, long size)
    {
        long _next;

        public bool TryNext(long end, out long offset)
        {
            var index = Interlocked.Increment(ref _next) - 1;
            if (index >= end)
            {
                // Give the index back so the next batch starts where this one ended.
                Interlocked.Decrement(ref _next);
                offset = 0;
                return false;
            }

            // qemu-img bench adds the step and wraps at the image size; a request that would then cross the
            // end starts at 0 instead (the fix QEMU later made for the same case).
            offset = (long)(((UInt128)(ulong)settings.Offset + (UInt128)(ulong)index * (ulong)settings.Step) % (ulong)size);
            if (offset > size - settings.BufferSize)
            {
                offset = 0;
            }

            return true;
        }
    }
}
