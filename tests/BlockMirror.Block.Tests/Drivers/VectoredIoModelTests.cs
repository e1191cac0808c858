using BlockMirror.Block.Buffers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Memory;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers;

/// <summary>
/// Scatter/gather reads and writes (<c>ReadVectorAsync</c>/<c>WriteVectorAsync</c>) with many small
/// segments, including lists longer than the kernel takes in one call (IOV_MAX, 1024), mixed with every
/// other request and checked against a byte array.
/// </summary>
public sealed class VectoredIoModelTests : IDisposable
{
    const long Size = 1 << 20;

    readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    static ModelProfile VectorProfile(ModelProfile profile) => profile with { VectorPercent = 80, ManySegmentsPercent = 25 };

    static async Task RunAsync(NodeEdge disk, ModelProfile profile, int seed)
    {
        using var runner = new ModelRunner(disk, VectorProfile(profile), seed);
        await runner.RunAsync(steps: 150, checkEvery: 50);
        Assert.True(runner.VectoredRequests > 0, "no vectored request was sent");
        Assert.True(runner.ManySegmentRequests > 0, "no request had more than 1024 segments");
    }

    [Fact]
    public Task Memory_driver_vectors_match_the_model() =>
        Seeds.RunAsync(Seeds.Range(8), async seed =>
        {
            await using var graph = new BlockGraph();
            var node = await MemoryDriver.OpenAsync(graph, "mem", new MemoryDriverOptions(Size));
            var profile = new ModelProfile
            {
                Size = Size,
                Granularity = 64 * 1024,
                WriteZeroesStatus = ZeroedStatus.AlwaysZero,
                DiscardReportsZero = true,
                StartsZero = true,
            };
            await RunAsync(graph.AttachRoot(node, new RootParent("test")), profile, seed);
        });

    [SkippableTheory]
    [InlineData(false, "threads")]
    [InlineData(true, "threads")]
    [InlineData(false, "io_uring")]
    [InlineData(true, "io_uring")]
    public async Task File_driver_vectors_match_the_model(bool direct, string aio)
    {
        await PunchHoleSupport.SkipUnlessAvailableAsync();
        IoUringSupport.SkipUnlessAvailable(aio);
        await Seeds.RunAsync(Seeds.Range(8), async seed =>
        {
            // A directory per seed, deleted after the graph closes, so long runs do not fill the disk.
            using var dir = new TempDirectory();
            var path = dir.File($"vectors-{direct}-{seed}.raw");
            FileDriver.CreateFile(path, Size);
            await using var graph = new BlockGraph();
            var node = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Direct: direct, Aio: aio, Discard: FileDiscardMode.Unmap));
            Assert.True(node.Capabilities.CanDiscard);
            Assert.Equal(aio, ((FileDriver)node.Driver).Engine);
            var profile = new ModelProfile
            {
                Size = Size,
                Alignment = direct ? FileDriver.DirectAlignment : 1,
                WriteZeroesStatus = ZeroedStatus.ZeroWhenMayUnmap,
                DiscardReportsZero = true,
                StartsZero = true,
                HostOffsetIsOffset = true,
                Buffers = direct ? BufferKind.Mixed : BufferKind.Heap,
            };
            await RunAsync(graph.AttachRoot(node, new RootParent("test")), profile, seed);
        });
    }

    /// <summary>
    /// Found by the model test (seed 0, step 12): an aligned 4 KiB request as 1310 small segments failed
    /// with EINVAL under O_DIRECT, because each segment was sent alone at an unaligned offset.
    /// </summary>
    [Fact]
    public async Task Direct_vectors_whose_segments_split_blocks_are_written_and_read_whole()
    {
        var path = _dir.File("split.raw");
        FileDriver.CreateFile(path, 4 * FileDriver.DirectAlignment);
        await using var graph = new BlockGraph();
        var node = await FileDriver.OpenAsync(graph, "file", new FileDriverOptions(path, Direct: true));
        var disk = graph.AttachRoot(node, new RootParent("test"));

        // 8 KiB as segments of 1, 2, 3, ... bytes (and the remainder), from aligned native memory.
        using var memory = new AlignedMemory(2 * FileDriver.DirectAlignment, FileDriver.DirectAlignment);
        for (var i = 0; i < memory.Length; i++)
        {
            memory.Memory.Span[i] = (byte)(i * 7);
        }

        var segments = Cut(memory.Memory);
        Assert.True(segments.Count > 100);
        await disk.WriteVectorAsync(FileDriver.DirectAlignment, [.. segments.Select(s => (ReadOnlyMemory<byte>)s)]);

        var file = System.IO.File.ReadAllBytes(path);
        Assert.Equal(memory.Memory.ToArray(), file[FileDriver.DirectAlignment..(3 * FileDriver.DirectAlignment)]);

        using var target = new AlignedMemory(2 * FileDriver.DirectAlignment, FileDriver.DirectAlignment);
        await disk.ReadVectorAsync(FileDriver.DirectAlignment, Cut(target.Memory));
        Assert.Equal(memory.Memory.ToArray(), target.Memory.ToArray());

        static List<Memory<byte>> Cut(Memory<byte> buffer)
        {
            List<Memory<byte>> segments = [];
            for (var size = 1; !buffer.IsEmpty; size++)
            {
                var take = Math.Min(size, buffer.Length);
                segments.Add(buffer[..take]);
                buffer = buffer[take..];
            }

            return segments;
        }
    }
}
