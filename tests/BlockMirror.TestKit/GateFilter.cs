using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.TestKit;

/// <summary>
/// A test filter that holds every request at a gate until the test opens it, and counts arrivals, so a
/// test can have requests in flight at a chosen moment.
/// </summary>
public sealed class GateFilter : FilterDriver
{
    readonly Lock _lock = new();
    TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);
    int _arrived;

    GateFilter(NodeEdge child, bool startOpen)
        : base(child)
    {
        if (startOpen)
        {
            _open.SetResult();
        }
    }

    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? name, BlockNode child, bool startOpen = false) =>
        graph.CreateNodeAsync(name, false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new GateFilter(node.AttachChild(ChildNames.File, child), startOpen)));

    public override string DriverName => "test-gate";

    /// <summary>Requests that reached the filter so far.</summary>
    public int Arrived => Volatile.Read(ref _arrived);

    /// <summary>Lets every held and future request through.</summary>
    public void Open()
    {
        lock (_lock)
        {
            _open.TrySetResult();
        }
    }

    /// <summary>Holds future requests again.</summary>
    public void Close()
    {
        lock (_lock)
        {
            if (_open.Task.IsCompleted)
            {
                _open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }
    }

    /// <summary>Completes when at least <paramref name="count"/> requests have arrived.</summary>
    public async Task WaitArrivedAsync(int count)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (Arrived < count)
        {
            await Task.Delay(1, cts.Token);
        }
    }

    async ValueTask PassAsync(CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _arrived);
        Task open;
        lock (_lock)
        {
            open = _open.Task;
        }

        await open.WaitAsync(cancellationToken);
    }

    public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.ReadAsync(offset, buffer, cancellationToken);
    }

    public override async ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.ReadVectorAsync(offset, buffers, cancellationToken);
    }

    public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.WriteAsync(offset, buffer, flags, cancellationToken);
    }

    public override async ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.WriteVectorAsync(offset, buffers, flags, cancellationToken);
    }

    public override async ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.DiscardAsync(offset, length, cancellationToken);
    }

    public override async ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.WriteZeroesAsync(offset, length, flags, cancellationToken);
    }

    public override async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        await PassAsync(cancellationToken);
        await base.FlushAsync(cancellationToken);
    }
}
