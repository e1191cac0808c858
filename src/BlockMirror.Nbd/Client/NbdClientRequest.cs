using System.Threading.Tasks.Sources;
using BlockMirror.Block.Io;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// One request slot of a client connection, reused from request to request (nothing is allocated per
/// request): what was asked, where a read's data goes, and what came back. The receive loop fills it and
/// completes it; the sender awaits it as a <see cref="ValueTask"/>.
/// </summary>
sealed class NbdClientRequest : IValueTaskSource
{
    ManualResetValueTaskSourceCore<bool> _completion = new() { RunContinuationsAsynchronously = true };

    public NbdClientRequest(int index) => Index = index;

    /// <summary>Position in the connection's slot table: the low 16 bits of the cookie.</summary>
    public int Index { get; }

    /// <summary>Bumped each time the slot is reused, so a late or forged reply for an earlier use is caught.</summary>
    public ushort Generation { get; private set; }

    public ulong Cookie => ((ulong)Generation << 16) | (uint)Index;

    /// <summary>The request header, written here before it is sent.</summary>
    public byte[] Header { get; } = new byte[NbdWire.RequestSize];

    public NbdCommand Command { get; private set; }

    public long Offset { get; private set; }

    public long Length { get; private set; }

    /// <summary>Where a read's data goes (its whole range, <see cref="Length"/> bytes).</summary>
    public Memory<byte> ReadBuffer { get; private set; }

    /// <summary>Bytes of a structured read covered so far by data and hole chunks.</summary>
    public long Covered { get; set; }

    /// <summary>The first extent of a block-status reply.</summary>
    public (uint Length, NbdAllocationState Flags)? Extent { get; set; }

    /// <summary>The server's error for this request, or None.</summary>
    public NbdError Error { get; private set; }

    /// <summary>The server's message with its error, if it sent one.</summary>
    public string? ErrorMessage { get; private set; }

    /// <summary>The connection failed before the reply was complete.</summary>
    public Exception? Failure { get; private set; }

    /// <summary>Sent and waiting for its reply.</summary>
    public bool Busy => Volatile.Read(ref _busy) != 0;

    int _busy;

    public void Start(NbdCommand command, long offset, long length, Memory<byte> readBuffer)
    {
        Generation++;
        Command = command;
        Offset = offset;
        Length = length;
        ReadBuffer = readBuffer;
        Covered = 0;
        Extent = null;
        Error = NbdError.None;
        ErrorMessage = null;
        Failure = null;
        _completion.Reset();
        Volatile.Write(ref _busy, 1);
    }

    /// <summary>Records the server's error; the first one counts (later chunks may add more).</summary>
    public void SetError(NbdError error, string? message)
    {
        if (Error == NbdError.None)
        {
            Error = error == NbdError.None ? NbdError.EINVAL : error;
            ErrorMessage = message;
        }
    }

    /// <summary>The reply is complete. Only the first of the receive loop and a failing connection completes it.</summary>
    public void Complete()
    {
        if (Interlocked.Exchange(ref _busy, 0) != 0)
        {
            ReadBuffer = default;
            _completion.SetResult(true);
        }
    }

    /// <summary>The connection failed: a request still waiting completes with the failure; others are left alone.</summary>
    public void Fail(Exception failure)
    {
        if (Interlocked.Exchange(ref _busy, 0) != 0)
        {
            Failure = failure;
            ReadBuffer = default;
            _completion.SetResult(true);
        }
    }

    public ValueTask WaitAsync() => new(this, _completion.Version);

    public void GetResult(short token) => _completion.GetResult(token);

    public ValueTaskSourceStatus GetStatus(short token) => _completion.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _completion.OnCompleted(continuation, state, token, flags);

    /// <summary>The errno a server error stands for (QEMU's nbd_errno_to_system_errno: unknown values are EINVAL).</summary>
    public static BlockErrno ToErrno(NbdError error) => error switch
    {
        NbdError.EPERM => BlockErrno.EPERM,
        NbdError.EIO => BlockErrno.EIO,
        NbdError.ENOMEM => BlockErrno.ENOMEM,
        NbdError.ENOSPC => BlockErrno.ENOSPC,
        NbdError.ESHUTDOWN => BlockErrno.ESHUTDOWN,
        NbdError.ENOTSUP => BlockErrno.ENOTSUP,
        _ => BlockErrno.EINVAL,
    };
}
