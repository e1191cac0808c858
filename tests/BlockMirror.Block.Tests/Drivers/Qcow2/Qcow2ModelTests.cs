using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// The qcow2 driver against a byte array: random writes, write-zeroes (with and without may-unmap),
/// discards, reads, flushes and block-status queries on small images with small clusters, so that L2
/// tables, refcount blocks and a larger refcount table are allocated in the middle of a run. Every run
/// closes the image and ends with <c>qemu-img check</c> finding nothing at all, not even a leak.
/// </summary>
public sealed class Qcow2ModelTests
{
    /// <summary>One kind of image the model runs on.</summary>
    public sealed record Shape(string Name, int ClusterSize, long Size, int Version = 3, bool Lazy = false, int RefcountBits = 16, int Steps = 60);

    public static TheoryData<string> Shapes => [.. AllShapes.Select(s => s.Name)];

    static readonly Shape[] AllShapes =
    [
        // 512-byte clusters: an L2 table maps 32 KiB and a refcount block counts 128 KiB of file, so a
        // run allocates several of each and outgrows the one-cluster refcount table.
        new("512 B clusters", 512, 384 << 10),
        new("4 KiB clusters", 4096, 1 << 20),
        new("64 KiB clusters", 65536, 4 << 20, Steps: 40),
        new("compat 0.10, 1 KiB clusters", 1024, 512 << 10, Version: 2),
        new("lazy refcounts, 1 KiB clusters", 1024, 512 << 10, Lazy: true),
        new("4-bit refcounts, 512 B clusters", 512, 256 << 10, RefcountBits: 4),
        new("64-bit refcounts, 512 B clusters", 512, 256 << 10, RefcountBits: 64),
    ];

    [SkippableTheory]
    [MemberData(nameof(Shapes))]
    public async Task Random_requests_match_the_model_and_leave_a_clean_image(string shapeName)
    {
        ExternalTool.Require("qemu-img");
        var shape = AllShapes.Single(s => s.Name == shapeName);
        var seeds = Seeds.Range(shape.ClusterSize == 512 && shape.RefcountBits == 16 ? 1000 : 200);
        await Seeds.RunAsync(seeds, async seed =>
        {
            using var dir = TempDirectory.InMemory("blockmirror-qcow2-model-");
            var path = dir.File("model.qcow2");
            Qcow2Create.Create(path, new Qcow2CreateOptions
            {
                Size = shape.Size,
                ClusterSize = shape.ClusterSize,
                Version = shape.Version,
                LazyRefcounts = shape.Lazy,
                RefcountBits = shape.RefcountBits,
            });

            ByteModel model;
            await using (var graph = new BlockGraph())
            {
                var node = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", Discard: FileDiscardMode.Unmap));
                var disk = graph.AttachRoot(node, new RootParent("model"));
                using var runner = new ModelRunner(disk, Profile(shape), seed);
                await runner.RunAsync(shape.Steps, checkEvery: 20);
                model = runner.Model;
            }

            var check = await ExternalTool.RunAsync("qemu-img", ["check", "-f", "qcow2", path]);
            Assert.True(check.ExitCode == 0, $"qemu-img check exited {check.ExitCode}:\n{check.StandardOutput}{check.StandardError}");
            if (seed % 25 == 0)
            {
                // qemu-img itself reads what the model holds.
                var raw = dir.File("model.raw");
                await File.WriteAllBytesAsync(raw, model.Bytes);
                await ExternalTool.RunCheckedAsync("qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, raw);
            }
        });
    }

    static ModelProfile Profile(Shape shape) => new()
    {
        Size = shape.Size,
        Granularity = shape.ClusterSize,
        DiscardZeroes = true,
        DiscardWholeGranulesOnly = true,
        DiscardReportsZero = true,
        WriteZeroesStatus = ZeroedStatus.AlwaysZero,
        StartsZero = true,
        MayBeUnallocated = true,
        VectorPercent = 20,
        FlushPercent = 5,
    };
}
