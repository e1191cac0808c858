using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Null;

/// <summary>Options of <c>null-co</c>, as QEMU names them.</summary>
/// <param name="Size">Length in bytes (QEMU's default is 1 GiB).</param>
/// <param name="ReadZeroes">Reads fill the buffer with zeroes; otherwise the buffer is left as it was.</param>
/// <param name="LatencyNs">Added to every request, to model a slow device.</param>
public sealed record NullDriverOptions(long Size = NullDriverOptions.DefaultSize, bool ReadZeroes = false, long LatencyNs = 0)
{
    public const long DefaultSize = 1L << 30;
}

/// <summary>
/// <c>null-co</c>: a device of a given size that discards writes and reads nothing (or zeroes). For
/// benchmarks, where it removes the storage from the measurement.
/// </summary>
public sealed class NullDriver : IBlockDriver, IReopenableDriver
{
    public const string Name = DriverNames.NullCo;

    readonly NullDriverOptions _options;

    NullDriver(NullDriverOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(options.Size);
        ArgumentOutOfRangeException.ThrowIfNegative(options.LatencyNs);
        _options = options;
        Capabilities = new DriverCapabilities
        {
            CanZeroEfficiently = true,
            CanUnmapOnZero = options.ReadZeroes,
            CanDiscard = true,
            DiscardZeroes = options.ReadZeroes,
            CanFua = true,
            ZeroInit = options.ReadZeroes,
        };
    }

    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, NullDriverOptions options, bool readOnly = false, CancellationToken cancellationToken = default) =>
        graph.CreateNodeAsync(nodeName, readOnly, (_, _) => ValueTask.FromResult<IBlockDriver>(new NullDriver(options)), cancellationToken);

    public string DriverName => Name;

    public DriverKind Kind => DriverKind.Protocol;

    public DriverCapabilities Capabilities { get; }

    public BlockLimits Limits => BlockLimits.ByteGranular;

    public long Length => _options.Size;

    public string? FileName => "null-co://";

    ValueTask Delay(CancellationToken cancellationToken) =>
        _options.LatencyNs == 0
            ? ValueTask.CompletedTask
            : new ValueTask(Task.Delay(TimeSpan.FromTicks(Math.Max(1, _options.LatencyNs / 100)), cancellationToken));

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (_options.ReadZeroes)
        {
            buffer.Span.Clear();
        }

        return Delay(cancellationToken);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken) => Delay(cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken) => Delay(cancellationToken);

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken) => Delay(cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken) => Delay(cancellationToken);

    /// <summary>As QEMU's null-co: zero when reads produce zeroes, otherwise nothing known (the node calls it allocated); offset valid.</summary>
    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken) =>
        ValueTask.FromResult(new BlockStatus((_options.ReadZeroes ? BlockStatusFlags.Zero : BlockStatusFlags.None) | BlockStatusFlags.OffsetValid, length, offset));

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        throw new System.Diagnostics.UnreachableException("the node refuses truncate: CanTruncate is false");

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>Nothing to change: the node's flag is all there is.</summary>
    public ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
