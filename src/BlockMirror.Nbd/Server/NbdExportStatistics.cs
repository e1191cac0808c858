using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Server;

/// <summary>
/// What clients asked of one export: requests and bytes per NBD command, and the requests answered with an
/// error (refused by the export's checks or failed below it). Interlocked adds on preallocated arrays; read by
/// the metrics (NbdMetrics).
/// </summary>
public sealed class NbdExportStatistics
{
    /// <summary>The commands counted: NBD_CMD_READ (0) to NBD_CMD_BLOCK_STATUS (7); others count as errors only.</summary>
    public const int Commands = (int)NbdCommand.BlockStatus + 1;

    readonly long[] _requests = new long[Commands];
    readonly long[] _bytes = new long[Commands];
    long _errors;

    public long Requests(NbdCommand command) => Volatile.Read(ref _requests[(int)command]);

    /// <summary>Bytes the requests of this command covered (read, written, trimmed, zeroed; 0 for the others).</summary>
    public long Bytes(NbdCommand command) => Volatile.Read(ref _bytes[(int)command]);

    public long Errors => Volatile.Read(ref _errors);

    internal void Received(NbdCommand command, ulong length)
    {
        var i = (int)command;
        if ((uint)i >= Commands)
        {
            return;
        }

        Interlocked.Increment(ref _requests[i]);
        if (command is NbdCommand.Read or NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes)
        {
            Interlocked.Add(ref _bytes[i], (long)Math.Min(length, long.MaxValue));
        }
    }

    /// <summary>The request is answered with an error.</summary>
    internal void Failed() => Interlocked.Increment(ref _errors);
}
