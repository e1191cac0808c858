using System.Runtime.CompilerServices;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Graph;

/// <summary>
/// Reads into a pipe (<see cref="SplicePipe"/>), for a server that sends read data on from there: the node checks,
/// counts and accounts the request as a read; a driver that has the data as it is in a file moves the file's
/// pages into the pipe, any other node reads into a buffer and copies it in, so the result is the same.
/// </summary>
public sealed partial class BlockNode
{
    /// <summary>Whether a read of the range would go into a pipe without a copy (nothing to pad or cut, a driver that splices).</summary>
    public bool CanSpliceRead(long offset, int length) =>
        Driver is ISpliceReadable splice && length > 0 && Fits(offset, length, Driver.Limits.MaxTransfer) && splice.CanSpliceRead(offset, length);

    /// <summary>Puts [<paramref name="offset"/>, +<paramref name="length"/>) in the pipe, which has room for it.</summary>
    public ValueTask SpliceReadAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken = default)
    {
        InFlight.Enter();
        return SpliceReadEnteredAsync(offset, length, pipe, cancellationToken);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    internal async ValueTask SpliceReadEnteredAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken)
    {
        try
        {
            ValidateRange(BlockOperation.Read, offset, length);
            if (length == 0)
            {
                return;
            }

            var started = AccountingStart();
            try
            {
                if (CanSpliceRead(offset, length))
                {
                    await ((ISpliceReadable)Driver).SpliceReadAsync(offset, length, pipe, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ReadThroughBufferAsync(offset, length, pipe, cancellationToken).ConfigureAwait(false);
                }

                Accounted(BlockOperation.Read, offset, length, started);
            }
            catch (Exception) when (AccountFailure(BlockOperation.Read, offset, length, started))
            {
                throw; // never reached: the filter only counts
            }
            catch (Exception ex) when (IsForeign(ex))
            {
                throw Wrap(ex, BlockOperation.Read, offset, length);
            }
        }
        finally
        {
            InFlight.Exit();
        }
    }

    /// <summary>The node's usual read into a pooled buffer, copied into the pipe.</summary>
    async ValueTask ReadThroughBufferAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken)
    {
        var buffer = PadBuffers.Rent(length);
        try
        {
            var memory = buffer.Memory[..length];
            if (Fits(offset, length, Driver.Limits.MaxTransfer))
            {
                await Driver.ReadAsync(offset, memory, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await ReadPipelinedAsync(offset, ReadTarget.Of(memory), cancellationToken).ConfigureAwait(false);
            }

            pipe.Write(memory.Span);
        }
        finally
        {
            PadBuffers.Return(buffer);
        }
    }
}
