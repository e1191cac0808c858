using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.File;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.TestKit;

namespace BlockMirror.Block.Tests.Drivers.Qcow2;

/// <summary>
/// A request whose token is cancelled (a mirror's forced cancel cancels its in-flight target writes) may
/// stop at any of its file requests, and the image must stay consistent: no leaked or doubly used cluster,
/// nothing written before lost, the node still usable. Each case is run once per file request the
/// operation makes, cancelling at that one.
/// </summary>
public sealed class Qcow2CancellationTests : IDisposable
{
    const int Cluster = 4096;
    const long Size = 4 << 20;

    readonly TempDirectory _dir = TempDirectory.InMemory("blockmirror-qcow2-cancel-");

    public enum Operation
    {
        /// <summary>A write into a new L2 table's range: table, data clusters and copy-on-write of the edges.</summary>
        AllocatingWrite,

        /// <summary>Whole allocated clusters zeroed with may-unmap: freed and marked zero.</summary>
        ZeroUnmapping,

        /// <summary>Whole allocated clusters discarded (discard=unmap): freed.</summary>
        Discard,

        /// <summary>A flush with dirty tables to write back.</summary>
        Flush,
    }

    [Theory]
    [InlineData(Operation.AllocatingWrite)]
    [InlineData(Operation.ZeroUnmapping)]
    [InlineData(Operation.Discard)]
    [InlineData(Operation.Flush)]
    public async Task A_request_cancelled_at_any_file_request_leaves_the_image_consistent(Operation operation)
    {
        var before = Pattern(1, 3 * Cluster);
        var after = Pattern(2, 6000);
        var later = Pattern(3, Cluster);
        for (var cancelAt = 1; ; cancelAt++)
        {
            var path = _dir.File($"{operation}-{cancelAt}.qcow2");
            Qcow2Create.Create(path, new Qcow2CreateOptions { Size = Size, ClusterSize = Cluster });
            bool reached;
            await using (var graph = new BlockGraph())
            {
                var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path, Discard: FileDiscardMode.Unmap));
                var cancelling = await graph.CreateNodeAsync(null, false, (node, _) =>
                    ValueTask.FromResult<IBlockDriver>(new CancelAtFilter(node.AttachChild(ChildNames.File, file))));
                var image = await Qcow2Driver.OpenAsync(graph, "img", cancelling, new Qcow2Options { Discard = FileDiscardMode.Unmap });
                await image.WriteAsync(0, before);
                var filter = (CancelAtFilter)cancelling.Driver;
                using var cts = new CancellationTokenSource();
                filter.Arm(cancelAt, cts);
                try
                {
                    await Run(operation, image, after, cts.Token);
                }
                catch (OperationCanceledException)
                {
                }

                reached = filter.Disarm();

                // Still usable afterwards: a write into the range of the L2 table the request used (a table
                // linked in memory but not in the file would lose it), made durable.
                await image.WriteAsync(LaterOffset(operation), later);
                await image.FlushAsync();
            }

            var check = await CheckAsync(path);
            Assert.True(check is { Corruptions: 0, Leaks: 0, CheckErrors: 0 },
                $"{operation} cancelled at file request {cancelAt}: {check.Corruptions} corruption(s), {check.Leaks} leak(s): {string.Join("; ", check.Messages)}");
            await using (var graph = new BlockGraph())
            {
                var image = await ImageFiles.OpenAsync(graph, new ImageOpenOptions(path, "qcow2", ReadOnly: true));
                await AssertReadsAsync(image, LaterOffset(operation), [later], $"{operation} at {cancelAt}: the write after the cancel");
                var target = operation == Operation.AllocatingWrite ? Size / 2 + 1000 : 0;
                var old = operation == Operation.AllocatingWrite ? new byte[after.Length] : before;
                var done = operation switch
                {
                    Operation.AllocatingWrite => after,
                    Operation.Flush => before,
                    _ => new byte[before.Length],
                };
                await AssertReadsAsync(image, target, [old, done], $"{operation} at {cancelAt}: the cancelled request's range");
            }

            if (!reached)
            {
                // The operation made fewer file requests than cancelAt: every point has been tried.
                return;
            }
        }
    }

    static long LaterOffset(Operation operation) => (operation == Operation.AllocatingWrite ? Size / 2 : 0) + 16 * Cluster;

    static async Task Run(Operation operation, BlockNode image, byte[] data, CancellationToken cancellationToken)
    {
        switch (operation)
        {
            case Operation.AllocatingWrite:
                await image.WriteAsync(Size / 2 + 1000, data, RequestFlags.None, cancellationToken);
                break;
            case Operation.ZeroUnmapping:
                await image.WriteZeroesAsync(0, 3 * Cluster, RequestFlags.MayUnmap, cancellationToken);
                break;
            case Operation.Discard:
                await image.DiscardAsync(0, 3 * Cluster, cancellationToken);
                break;
            case Operation.Flush:
                await image.FlushAsync(cancellationToken);
                break;
        }
    }

    /// <summary>Each byte of the range reads as in one of <paramref name="allowed"/> (the request happened or it did not).</summary>
    static async Task AssertReadsAsync(BlockNode image, long offset, byte[][] allowed, string what)
    {
        var actual = new byte[allowed[0].Length];
        await image.ReadAsync(offset, actual);
        for (var i = 0; i < actual.Length; i++)
        {
            Assert.True(allowed.Any(a => a[i] == actual[i]), $"{what}: byte {offset + i} reads {actual[i]}");
        }
    }

    static async Task<Qcow2CheckResult> CheckAsync(string path)
    {
        await using var graph = new BlockGraph();
        var file = await FileDriver.OpenAsync(graph, null, new FileDriverOptions(path), readOnly: true);
        return await Qcow2Check.CheckAsync(file, Qcow2RepairMode.None);
    }

    static byte[] Pattern(int seed, int length)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    public void Dispose() => _dir.Dispose();

    /// <summary>
    /// Once armed, cancels the token source at the n-th request and from then on fails every request that
    /// carries a cancelled token, as the file driver may: deterministic where the real file races.
    /// </summary>
    sealed class CancelAtFilter(NodeEdge child) : FilterDriver(child)
    {
        int _remaining = -1;
        CancellationTokenSource? _cts;

        public override string DriverName => "test-cancel-at";

        public void Arm(int n, CancellationTokenSource cts) => (_remaining, _cts) = (n, cts);

        /// <summary>Disarms; true when the n-th request was reached.</summary>
        public bool Disarm()
        {
            var reached = _remaining == 0;
            (_remaining, _cts) = (-1, null);
            return reached;
        }

        void Step(CancellationToken cancellationToken)
        {
            if (_remaining > 0 && --_remaining == 0)
            {
                _cts!.Cancel();
            }

            cancellationToken.ThrowIfCancellationRequested();
        }

        public override ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.ReadAsync(offset, buffer, cancellationToken);
        }

        public override ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.ReadVectorAsync(offset, buffers, cancellationToken);
        }

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.WriteAsync(offset, buffer, flags, cancellationToken);
        }

        public override ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.WriteVectorAsync(offset, buffers, flags, cancellationToken);
        }

        public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.WriteZeroesAsync(offset, length, flags, cancellationToken);
        }

        public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.DiscardAsync(offset, length, cancellationToken);
        }

        public override ValueTask FlushAsync(CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.FlushAsync(cancellationToken);
        }

        public override ValueTask TruncateAsync(long length, CancellationToken cancellationToken)
        {
            Step(cancellationToken);
            return base.TruncateAsync(length, cancellationToken);
        }
    }
}
