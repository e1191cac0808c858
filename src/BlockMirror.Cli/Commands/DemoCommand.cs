using System.CommandLine;
using System.Diagnostics;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Ui;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror demo</c>: the whole product on built-in data. Builds a source image (data, written
/// zeroes, holes), keeps in-process writers writing to it as a VM would, mirrors it to a new image with
/// a live view, completes (pivots) while the writers run, lets them write to the target for a moment,
/// and verifies byte for byte that the target holds every write.
/// </summary>
static class DemoCommand
{
    const int Block = 4096;

    /// <summary>The simulated VM writes whole 64 KiB blocks: one write dirties one chunk of the default granularity.</summary>
    const int WriteBlock = 64 * 1024;

    public static Command Create()
    {
        var size = new Option<string>("--size") { Description = "Source image size", DefaultValueFactory = _ => "256M" };
        var rate = new Option<string>("--write-rate") { Description = "Total write rate of the simulated VM, e.g. 16M (per second)", DefaultValueFactory = _ => "16M" };
        var writers = new Option<int>("--writers") { Description = "Concurrent writers", DefaultValueFactory = _ => 4 };
        var speed = new Option<string?>("--speed") { Description = "Mirror speed limit, e.g. 64M (default: unlimited)" };
        var copyMode = new Option<string>("--copy-mode") { Description = CopyModes.Help, DefaultValueFactory = _ => "background" };
        var keep = new Option<bool>("--keep") { Description = "Keep the images (their directory is printed)" };
        var command = new Command("demo", "Mirror a disk that is being written to, pivot, and verify that no write was lost")
        {
            size, rate, writers, speed, copyMode, keep,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunAsync("demo", () =>
        {
            var writerCount = parse.GetValue(writers);
            if (writerCount is < 1 or > 64)
            {
                throw new UsageException($"--writers must be between 1 and 64, got {writerCount}");
            }

            var bytes = ByteSize.Parse(parse.GetValue(size)!, "--size");
            if (bytes < 1 << 20 || bytes > 2L << 30 || bytes % WriteBlock != 0)
            {
                throw new UsageException($"--size must be a multiple of 64K between 1M and 2G, got {parse.GetValue(size)}");
            }

            var speedText = parse.GetValue(speed);
            var mirror = new MirrorOptions
            {
                JobId = "demo", Speed = speedText is null ? 0 : ByteSize.Parse(speedText, "--speed"), CopyMode = CopyModes.Parse(parse.GetValue(copyMode)!),
            };
            return RunAsync(bytes, ByteSize.Parse(parse.GetValue(rate)!, "--write-rate"), writerCount, mirror, parse.GetValue(keep), cancellationToken);
        }));
        return command;
    }

    static async Task<int> RunAsync(long size, long writeRate, int writerCount, MirrorOptions mirror, bool keep, CancellationToken cancellationToken)
    {
        var directory = Directory.CreateTempSubdirectory("blockmirror-demo-");
        try
        {
            var sourcePath = Path.Combine(directory.FullName, "source.raw");
            var targetPath = Path.Combine(directory.FullName, "target.raw");
            Console.WriteLine($"BlockMirror demo: {ByteSize.Format(size)} disk, {writerCount} writers at {ByteSize.Format(writeRate)}/s, images in {directory.FullName}");

            await using var graph = new BlockGraph();
            ImageFiles.Create(sourcePath, "raw", size);
            var source = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(sourcePath, "raw", NodeName: "source"), cancellationToken);
            var vm = graph.AttachRoot(source, new RootParent("vm"));
            var model = new byte[size];
            await FillAsync(vm, model, cancellationToken);

            ImageFiles.Create(targetPath, "raw", size);
            var target = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(targetPath, "raw", NodeName: "target"), cancellationToken);

            using var stopWriters = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var writers = new Writers(vm, model, writerCount, writeRate);
            var writing = writers.RunAsync(stopWriters.Token);

            var manager = new JobManager();
            var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var subscription = manager.Events.Subscribe(e =>
            {
                if (e is BlockJobReadyEvent)
                {
                    ready.TrySetResult();
                }
            });

            var clock = Stopwatch.StartNew();
            var job = await MirrorJob.StartAsync(manager, graph, source, target, mirror, cancellationToken);
            TimeSpan? blockingSince = null;
            var progress = ProgressLine.ForConsole();
            var vmRate = new RateMeter(TimeSpan.FromSeconds(2));

            TimeSpan? timeToReady = null;
            TimeSpan? completedAt = null;
            while (!job.Finished.IsCompleted)
            {
                var info = job.GetInfo();
                progress.Update(info.Offset, info.Len, job.GetProgress(), info.Status.ToWireName(),
                    $"  vm writes {ByteSize.Format(vmRate.Sample(writers.BytesWritten))}/s{(job.WritesBlocking ? "  writes blocking" : "")}");
                if (job.WritesBlocking && blockingSince is null)
                {
                    blockingSince = clock.Elapsed;
                }

                if (ready.Task.IsCompleted && timeToReady is null)
                {
                    timeToReady = clock.Elapsed;
                }

                // Stay READY for a moment with the writers still writing, as a VM would, then pivot.
                if (timeToReady is { } t && completedAt is null && clock.Elapsed - t > TimeSpan.FromSeconds(0.5))
                {
                    completedAt = clock.Elapsed;
                    job.Complete();
                }

                await Task.WhenAny(job.Finished, Task.Delay(100, cancellationToken));
            }

            var final = job.GetInfo();
            progress.Update(final.Offset, Math.Max(final.Len, final.Offset), job.GetProgress(), job.Error is null ? "completed" : "failed", force: true);
            progress.Finish();
            if (job.Error is not null)
            {
                throw new IOException($"the mirror failed: {job.Failure?.Message ?? job.Error}");
            }

            var writesBeforePivot = writers.Writes;
            var pivoted = ReferenceEquals(vm.Node, target);
            Console.WriteLine(pivoted
                ? $"pivot done: the writers now write to '{target.Name}'"
                : $"the writers still write to '{vm.Node.Name}', expected '{target.Name}'");

            // The VM keeps running on the copy for a moment.
            await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
            await stopWriters.CancelAsync();
            await writing;
            await vm.FlushAsync(cancellationToken);

            if (mirror.CopyMode != MirrorCopyMode.Background)
            {
                Console.WriteLine(blockingSince is { } since
                    ? $"copy mode {CopyModes.Name(mirror.CopyMode)}: guest writes blocked (written to both images) from {since.TotalSeconds:0.0} s on"
                    : $"copy mode {CopyModes.Name(mirror.CopyMode)}: guest writes never blocked");
            }

            var mismatch = await FirstMismatchAsync(target, model, cancellationToken);
            Console.WriteLine($"copied {ByteSize.Format(final.Offset)}; time to READY {timeToReady?.TotalSeconds:0.00} s; " +
                $"pause at the switch {job.PivotPause?.TotalMilliseconds:0.0} ms (longest write during the mirror: {writers.LongestWrite.TotalMilliseconds:0.0} ms)");
            Console.WriteLine($"the writers made {writers.Writes} writes ({ByteSize.Format(writers.BytesWritten)}), " +
                $"{writers.Writes - writesBeforePivot} of them after the pivot, on the target");
            if (mismatch < 0 && pivoted)
            {
                Console.WriteLine("PASS: the target holds every write, byte for byte");
                return 0;
            }

            Console.WriteLine(mismatch >= 0
                ? $"FAIL: the target differs from the writes at offset {mismatch}"
                : "FAIL: the writers were not moved to the target");
            return 1;
        }
        finally
        {
            if (keep)
            {
                Console.WriteLine($"images kept in {directory.FullName}");
            }
            else
            {
                directory.Delete(recursive: true);
            }
        }
    }

    /// <summary>The starting disk: 40% random data, 20% written zeroes, the rest holes with a few islands of data.</summary>
    static async Task FillAsync(NodeEdge vm, byte[] model, CancellationToken cancellationToken)
    {
        var size = model.LongLength;
        var random = new Random(2024);
        var dataEnd = size * 4 / 10 / Block * Block;
        const int Chunk = 1 << 20;
        for (long offset = 0; offset < dataEnd; offset += Chunk)
        {
            var length = (int)Math.Min(Chunk, dataEnd - offset);
            random.NextBytes(model.AsSpan((int)offset, length));
            await vm.WriteAsync(offset, model.AsMemory((int)offset, length), cancellationToken: cancellationToken);
        }

        var zeroEnd = size * 6 / 10 / Block * Block;
        await vm.WriteZeroesAsync(dataEnd, zeroEnd - dataEnd, RequestFlags.None, cancellationToken);
        for (var i = 0; i < 16; i++)
        {
            var offset = zeroEnd + random.NextInt64((size - zeroEnd) / 65536) * 65536;
            var length = (int)Math.Min(65536, size - offset);
            random.NextBytes(model.AsSpan((int)offset, length));
            await vm.WriteAsync(offset, model.AsMemory((int)offset, length), cancellationToken: cancellationToken);
        }

        await vm.FlushAsync(cancellationToken);
    }

    static async Task<long> FirstMismatchAsync(BlockNode node, byte[] model, CancellationToken cancellationToken)
    {
        var buffer = new byte[1 << 20];
        for (long offset = 0; offset < model.LongLength; offset += buffer.Length)
        {
            var length = (int)Math.Min(buffer.Length, model.LongLength - offset);
            await node.ReadAsync(offset, buffer.AsMemory(0, length), cancellationToken);
            var common = buffer.AsSpan(0, length).CommonPrefixLength(model.AsSpan((int)offset, length));
            if (common != length)
            {
                return offset + common;
            }
        }

        return -1;
    }

    /// <summary>
    /// The simulated VM: writers that each own every N-th 64 KiB block, so their writes never overlap and
    /// the model of the disk is exact; each write is recorded in the model once it is acknowledged.
    /// </summary>
    sealed class Writers(NodeEdge vm, byte[] model, int count, long bytesPerSecond)
    {
        long _writes;
        long _bytes;
        long _longestTicks;

        public long Writes => Interlocked.Read(ref _writes);

        public long BytesWritten => Interlocked.Read(ref _bytes);

        public TimeSpan LongestWrite => TimeSpan.FromTicks(Interlocked.Read(ref _longestTicks));

        public Task RunAsync(CancellationToken stop) =>
            Task.WhenAll(Enumerable.Range(0, count).Select(i => Task.Run(() => WriterAsync(i, stop), CancellationToken.None)));

        async Task WriterAsync(int index, CancellationToken stop)
        {
            var random = new Random(index + 1);
            var blocks = model.LongLength / WriteBlock;
            var buffer = new byte[WriteBlock];
            var perWriter = Math.Max(1, bytesPerSecond / count);
            var clock = Stopwatch.StartNew();
            long written = 0;
            while (!stop.IsCancellationRequested)
            {
                var block = random.NextInt64(blocks / count) * count + index;
                if (block >= blocks)
                {
                    continue;
                }

                var offset = block * WriteBlock;
                random.NextBytes(buffer);
                var started = Stopwatch.GetTimestamp();
                await vm.WriteAsync(offset, buffer, cancellationToken: CancellationToken.None);
                var took = Stopwatch.GetElapsedTime(started).Ticks;
                buffer.CopyTo(model, offset);
                Atomic.Max(ref _longestTicks, took);
                Interlocked.Increment(ref _writes);
                Interlocked.Add(ref _bytes, WriteBlock);
                written += WriteBlock;

                // Pace to the requested rate.
                var due = TimeSpan.FromSeconds((double)written / perWriter) - clock.Elapsed;
                if (due > TimeSpan.Zero)
                {
                    try
                    {
                        await Task.Delay(due, stop);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            }
        }
    }
}
