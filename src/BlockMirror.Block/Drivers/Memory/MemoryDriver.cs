using System.Diagnostics;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Memory;

/// <summary>Options of the in-memory driver.</summary>
/// <param name="Size">Length in bytes.</param>
/// <param name="ZeroInit">
/// When false, never-written bytes read as <see cref="MemoryDriver.GarbageByte"/> and are reported as
/// data: a target that does not read back zeroes, for testing code that must not assume it does.
/// </param>
public sealed record MemoryDriverOptions(long Size, bool ZeroInit = true);

/// <summary>
/// A sparse in-memory disk for tests: 64 KiB pages allocated on first write, freed again by
/// write-zeroes and discard of whole pages.
/// </summary>
/// <remarks>
/// Pages are swapped with compare-and-exchange, so concurrent writes to different parts of one page
/// never lose each other. Overlapping concurrent requests get no ordering, as on a real disk.
/// </remarks>
public sealed class MemoryDriver : IBlockDriver, IReopenableDriver
{
    public const string Name = DriverNames.Memory;
    public const byte GarbageByte = 0xA5;

    const int PageShift = 16;
    const int PageSize = 1 << PageShift;

    // A page slot is null (never written: reads the initial content), ZeroPage (reads zeroes), or data.
    static readonly byte[] ZeroPage = [];

    readonly Lock _resizeLock = new();
    readonly bool _zeroInit;
    byte[]?[] _pages;
    long _length;

    MemoryDriver(MemoryDriverOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(options.Size);
        _zeroInit = options.ZeroInit;
        _length = options.Size;
        _pages = new byte[]?[PageCount(options.Size)];
        Capabilities = new DriverCapabilities
        {
            CanZeroEfficiently = true,
            CanUnmapOnZero = true,
            CanDiscard = true,
            DiscardZeroes = true,
            CanFua = true,
            ZeroInit = options.ZeroInit,
            CanTruncate = true,
        };
    }

    /// <summary>Creates a node with a memory driver.</summary>
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, MemoryDriverOptions options, bool readOnly = false, CancellationToken cancellationToken = default) =>
        graph.CreateNodeAsync(nodeName, readOnly, (_, _) => ValueTask.FromResult<IBlockDriver>(new MemoryDriver(options)), cancellationToken);

    public string DriverName => Name;

    public DriverKind Kind => DriverKind.Protocol;

    public DriverCapabilities Capabilities { get; }

    public BlockLimits Limits => BlockLimits.ByteGranular;

    public long Length => Volatile.Read(ref _length);

    public string? FileName => "memory";

    static long PageCount(long size) => (size + PageSize - 1) >> PageShift;

    byte InitialByte => _zeroInit ? (byte)0 : GarbageByte;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var span = buffer.Span;
        var pages = Volatile.Read(ref _pages);
        while (!span.IsEmpty)
        {
            var index = offset >> PageShift;
            var inPage = (int)(offset & (PageSize - 1));
            var count = Math.Min(span.Length, PageSize - inPage);
            var page = index < pages.Length ? Volatile.Read(ref pages[index]) : ZeroPage;
            if (page is null)
            {
                span[..count].Fill(InitialByte);
            }
            else if (ReferenceEquals(page, ZeroPage))
            {
                span[..count].Clear();
            }
            else
            {
                page.AsSpan(inPage, count).CopyTo(span);
            }

            span = span[count..];
            offset += count;
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        var span = buffer.Span;
        while (!span.IsEmpty)
        {
            var inPage = (int)(offset & (PageSize - 1));
            var count = Math.Min(span.Length, PageSize - inPage);
            span[..count].CopyTo(MaterializePage(offset >> PageShift).AsSpan(inPage, count));
            span = span[count..];
            offset += count;
        }

        return ValueTask.CompletedTask;
    }

    /// <summary>Returns a data page for the slot, creating it with the slot's current content if needed.</summary>
    byte[] MaterializePage(long index)
    {
        var pages = Volatile.Read(ref _pages);
        while (true)
        {
            var current = Volatile.Read(ref pages[index]);
            if (current is not null && !ReferenceEquals(current, ZeroPage))
            {
                return current;
            }

            var fresh = new byte[PageSize];
            if (current is null && !_zeroInit)
            {
                Array.Fill(fresh, GarbageByte);
            }

            if (ReferenceEquals(Interlocked.CompareExchange(ref pages[index], fresh, current), current))
            {
                return fresh;
            }
        }
    }

    public ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        ZeroRange(offset, length);
        return ValueTask.CompletedTask;
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        ZeroRange(offset, length);
        return ValueTask.CompletedTask;
    }

    void ZeroRange(long offset, long length)
    {
        var pages = Volatile.Read(ref _pages);
        var end = offset + length;
        while (offset < end)
        {
            var index = offset >> PageShift;
            var inPage = (int)(offset & (PageSize - 1));
            var count = (int)Math.Min(end - offset, PageSize - inPage);
            if (count == PageSize)
            {
                Volatile.Write(ref pages[index], ZeroPage);
            }
            else if (Volatile.Read(ref pages[index]) is not { } page || !ReferenceEquals(page, ZeroPage))
            {
                MaterializePage(index).AsSpan(inPage, count).Clear();
            }

            offset += count;
        }
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var pages = Volatile.Read(ref _pages);
        var end = offset + length;
        var first = Classify(pages, offset >> PageShift);
        var position = ((offset >> PageShift) + 1) << PageShift;
        while (position < end && Classify(pages, position >> PageShift) == first)
        {
            position += PageSize;
        }

        var run = Math.Min(position, end) - offset;
        Debug.Assert(run > 0);
        return ValueTask.FromResult(new BlockStatus(first, run));
    }

    BlockStatusFlags Classify(byte[]?[] pages, long index)
    {
        var page = index < pages.Length ? Volatile.Read(ref pages[index]) : ZeroPage;
        return page is null
            ? (_zeroInit ? BlockStatusFlags.Zero : BlockStatusFlags.Data)
            : ReferenceEquals(page, ZeroPage) ? BlockStatusFlags.Zero : BlockStatusFlags.Data;
    }

    public ValueTask TruncateAsync(long length, CancellationToken cancellationToken)
    {
        lock (_resizeLock)
        {
            var old = _length;
            var pages = _pages;
            var resized = new byte[]?[PageCount(length)];
            Array.Copy(pages, resized, Math.Min(pages.Length, resized.Length));
            if (length > old)
            {
                // The grown part reads zeroes whatever the initial content was: mark the new whole pages
                // as zero pages and clear the tail of the old last page.
                for (var i = PageCount(old); i < resized.Length; i++)
                {
                    resized[i] = ZeroPage;
                }

                Volatile.Write(ref _pages, resized);
                Volatile.Write(ref _length, length);
                var tail = Math.Min(length, PageCount(old) << PageShift) - old;
                if (tail > 0)
                {
                    ZeroRange(old, tail);
                }
            }
            else
            {
                // Bytes past a shrunk end are not cleared here: growing again clears them (above).
                Volatile.Write(ref _pages, resized);
                Volatile.Write(ref _length, length);
            }
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>Nothing to change: the node's flag is all there is.</summary>
    public ValueTask ReopenAsync(bool readOnly, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
