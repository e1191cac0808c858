using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Tests.Drivers.PowerLoss;

/// <summary>
/// A pass-through filter over the file that writes every data change and flush into a <see cref="PowerLossJournal"/>
/// (a change when it is issued, with a copy of its data, and again when it completes), so that the test can
/// build what the disk could hold after a power loss at any moment.
/// </summary>
sealed class PowerLossRecorder : FilterDriver
{
    readonly PowerLossJournal _journal;

    PowerLossRecorder(NodeEdge child, PowerLossJournal journal)
        : base(child)
    {
        _journal = journal;
    }

    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, BlockNode file, PowerLossJournal journal) =>
        graph.CreateNodeAsync("power-loss-recorder", false, (node, _) =>
            ValueTask.FromResult<IBlockDriver>(new PowerLossRecorder(node.AttachChild(ChildNames.File, file), journal)));

    public override string DriverName => "test-power-loss-recorder";

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken) =>
        RecordAsync(new FileChange(ChangeKind.Write, offset, buffer.Length, buffer.ToArray(), Fua(flags)),
            () => base.WriteAsync(offset, buffer, flags, cancellationToken));

    public override ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        var data = buffers.SelectMany(b => b.ToArray()).ToArray();
        return RecordAsync(new FileChange(ChangeKind.Write, offset, data.Length, data, Fua(flags)),
            () => base.WriteVectorAsync(offset, buffers, flags, cancellationToken));
    }

    public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken) =>
        RecordAsync(new FileChange(ChangeKind.Zero, offset, length, null, Fua(flags)),
            () => base.WriteZeroesAsync(offset, length, flags, cancellationToken));

    // The file below is opened with discard=unmap: a discarded range reads back as zeroes.
    public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken) =>
        RecordAsync(new FileChange(ChangeKind.Zero, offset, length, null, Fua: false),
            () => base.DiscardAsync(offset, length, cancellationToken));

    public override ValueTask TruncateAsync(long length, CancellationToken cancellationToken) =>
        RecordAsync(new FileChange(ChangeKind.Truncate, 0, length, null, Fua: false),
            () => base.TruncateAsync(length, cancellationToken));

    public override async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        var id = _journal.Begin(JournalKind.FlushIssued);
        await base.FlushAsync(cancellationToken).ConfigureAwait(false);
        _journal.End(JournalKind.FlushDone, id);
    }

    static bool Fua(RequestFlags flags) => (flags & RequestFlags.Fua) != 0;

    async ValueTask RecordAsync(FileChange change, Func<ValueTask> request)
    {
        var id = _journal.Begin(JournalKind.ChangeIssued, change);
        await request().ConfigureAwait(false);
        _journal.End(JournalKind.ChangeDone, id);
    }
}
