using System.Runtime.InteropServices;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// Turns the first SIGINT (Ctrl-C) or SIGTERM into a cancellation, so that a command that writes images can
/// stop its job, close the images and clean up after itself; a second signal ends the process as usual, for
/// a command that does not stop. The command's own token is not enough: System.CommandLine's invocation
/// token was never cancelled by either signal here (the process died of the signal, checked by sending
/// SIGINT to <c>blockmirror mirror</c>), so the images were left as the signal found them.
/// </summary>
sealed class Interrupts : IDisposable
{
    readonly CancellationTokenSource _source;
    readonly PosixSignalRegistration _interrupt;
    readonly PosixSignalRegistration _terminate;
    int _signals;

    Interrupts(CancellationToken cancellationToken)
    {
        _source = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Cancelled by the first SIGINT or SIGTERM, or with <c>cancellationToken</c>.</summary>
    public CancellationToken Token => _source.Token;

    /// <summary>The first signal any watcher received (null: none), for the exit status and the message.</summary>
    public static PosixSignal? Received { get; private set; }

    /// <summary>A shell's status for a command ended by the signal: 128 + its number (130 for SIGINT, 143 for SIGTERM).</summary>
    public static int ExitCode => Received == PosixSignal.SIGTERM ? 143 : 130;

    /// <summary>What the one line on stderr says: "interrupted" (Ctrl-C) or "terminated" (SIGTERM).</summary>
    public static string Word => Received == PosixSignal.SIGTERM ? "terminated" : "interrupted";

    /// <summary>Watches for the signals until disposed.</summary>
    public static Interrupts Watch(CancellationToken cancellationToken) => new(cancellationToken);

    void OnSignal(PosixSignalContext context)
    {
        if (Interlocked.Increment(ref _signals) == 1)
        {
            Received ??= context.Signal;
            context.Cancel = true;
            _source.Cancel();
        }
    }

    public void Dispose()
    {
        _interrupt.Dispose();
        _terminate.Dispose();
        _source.Dispose();
    }
}
