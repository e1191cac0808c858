using BlockMirror.Block.Io;

namespace BlockMirror.Nbd.Server;

// Read data that goes from the file to the socket through a pipe (SplicePipe), never through a buffer of ours: where
// the export's node has its data as it is in a file (raw or file over a file) and the socket is plain, a read is
// spliced into a pipe (from the process's pool of idle pipes, SplicePipe.Rent), and the sender splices the pipe into the socket after the reply's header.
// The read and its errors happen before any header is sent, as with a buffer. Measured with nbdcopy reading a cold
// 1 GiB export on 2 cores: the daemon's CPU halved (bench/README.md).
sealed partial class NbdTransmission
{
    /// <summary>Reads that went through a pipe, for tests that must know which path they exercised.</summary>
    internal static long SplicedReads;

    /// <summary>How large a pipe may grow; tests lower it.</summary>
    internal static int PipeLimit = SplicePipe.MaxCapacity;

    /// <summary>
    /// A pipe with room for <paramref name="pages"/> slots (<see cref="SplicePipe.PagesFor"/> of what will go in)
    /// when the read of [<paramref name="offset"/>, +<paramref name="length"/>) can go through one; null otherwise.
    /// </summary>
    SplicePipe? RentPipe(long offset, int length, long pages)
    {
        if (length == 0 || pages * 4096 > PipeLimit || !_gather.CanSplice || !_edge.Node.CanSpliceRead(offset, length))
        {
            return null;
        }

        var pipe = SplicePipe.Rent();
        if (pipe is null || pipe.TryReservePages(pages, PipeLimit))
        {
            return pipe;
        }

        // The system would not grow it (the user's pipe budget): this read takes a buffer.
        pipe.Release();
        return null;
    }

    /// <summary>Reads [<paramref name="offset"/>, +<paramref name="length"/>) into the pipe; on failure the pipe is given up.</summary>
    async ValueTask ReadIntoPipeAsync(SplicePipe pipe, long offset, int length)
    {
        try
        {
            await _edge.SpliceReadAsync(offset, length, pipe).ConfigureAwait(false);
        }
        catch
        {
            pipe.Release();
            throw;
        }
    }
}
