using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Qcow2;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Benchmarks;

/// <summary>
/// The qcow2 driver's own cost per request, without a disk: an image in /dev/shm (tmpfs), 64 KiB clusters,
/// its L2 tables cached. What one 4 KiB read or overwrite of allocated data costs on top of the file
/// (mapping lookup, locking, the request path), and what allocating one new cluster costs (L2 and
/// refcount updates, the allocation record, the write itself). The scenario benchmarks (bench/run
/// --scenarios qcow2) measure the same paths against qemu-img bench on a real disk.
/// </summary>
[Config(typeof(Config))]
[MemoryDiagnoser]
public class Qcow2Benchmarks
{
    const long Size = 256L << 20;
    const int Block = 4096;
    const int Requests = 4096;
    const int Seed = 20261201;

    sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.ShortRun);
        }
    }

    readonly byte[] _buffer = GC.AllocateArray<byte>(64 << 10, pinned: true);
    long[] _offsets = [];
    string _directory = "";
    BlockGraph? _graph;
    BlockNode? _image;
    long _next;

    [GlobalSetup]
    public async Task SetupAsync()
    {
        _directory = Directory.Exists("/dev/shm")
            ? Directory.CreateDirectory(Path.Combine("/dev/shm", "blockmirror-qcow2-bench-" + Environment.ProcessId)).FullName
            : Directory.CreateTempSubdirectory("blockmirror-qcow2-bench-").FullName;
        var random = new Random(Seed);
        random.NextBytes(_buffer);
        _offsets = [.. Enumerable.Range(0, Requests).Select(_ => random.NextInt64(Size / 2 / Block) * Block)];
        var path = Path.Combine(_directory, "bench.qcow2");
        Qcow2Create.Create(path, new Qcow2CreateOptions { Size = Size, ClusterSize = 64 << 10 });
        _graph = new BlockGraph();
        _image = await ImageFiles.OpenAsync(_graph, new ImageOpenOptions(path));

        // The first half allocated (what reads and overwrites touch); the second half is for allocation.
        for (long offset = 0; offset < Size / 2; offset += _buffer.Length)
        {
            await _image.WriteAsync(offset, _buffer);
        }

        _next = Size / 2;
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        if (_graph is not null)
        {
            await _graph.DisposeAsync();
        }

        Directory.Delete(_directory, recursive: true);
    }

    [Benchmark(OperationsPerInvoke = Requests, Description = "4 KiB read of allocated data")]
    public async Task Read4KiB()
    {
        foreach (var offset in _offsets)
        {
            await _image!.ReadAsync(offset, _buffer.AsMemory(0, Block));
        }
    }

    [Benchmark(OperationsPerInvoke = Requests, Description = "4 KiB overwrite of allocated data")]
    public async Task Overwrite4KiB()
    {
        foreach (var offset in _offsets)
        {
            await _image!.WriteAsync(offset, _buffer.AsMemory(0, Block));
        }
    }

    /// <summary>
    /// Whole new clusters, one after another. When the second half is full it is zeroed with unmap, which
    /// frees its clusters, and the writes start over (a cost spread over 2048 allocations).
    /// </summary>
    [Benchmark(OperationsPerInvoke = 64, Description = "64 KiB write allocating a cluster")]
    public async Task Allocate64KiB()
    {
        for (var i = 0; i < 64; i++)
        {
            if (_next >= Size)
            {
                await _image!.WriteZeroesAsync(Size / 2, Size / 2, RequestFlags.MayUnmap);
                _next = Size / 2;
            }

            await _image!.WriteAsync(_next, _buffer);
            _next += _buffer.Length;
        }
    }
}
