namespace BlockMirror.Nbd.Client;

/// <summary>
/// Where a client node stands with its server across connections (QEMU 7.2's NBDClientState in block/nbd.c).
/// </summary>
public enum NbdClientState
{
    /// <summary>A connection is up: requests go out on it.</summary>
    Connected,

    /// <summary>
    /// The connection was lost and <c>reconnect-delay</c> has not run out: requests wait for a new connection and
    /// are then sent on it. The delay starts when the first request meets the lost connection.
    /// </summary>
    ConnectingWait,

    /// <summary>
    /// The connection was lost and requests fail at once (no <c>reconnect-delay</c>, or it ran out, or a forced
    /// cancel gave up on it). The client still connects again in the background; the first request after that
    /// goes out on the new connection.
    /// </summary>
    ConnectingNoWait,

    /// <summary>For good: the node was closed, or the server broke the protocol. Every request fails.</summary>
    Quit,
}
