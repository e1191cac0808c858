namespace BlockMirror.Nbd.Client;

/// <summary>
/// Options of the <c>nbd</c> driver, as QEMU 7.2's BlockdevOptionsNbd names them.
/// </summary>
/// <param name="Server">Where the server listens.</param>
/// <param name="Export">The export's name (QEMU's default is the empty name).</param>
/// <param name="UpgradeToTls">With <c>tls-creds</c>: wraps the connection in TLS after NBD_OPT_STARTTLS.</param>
/// <param name="ReconnectDelay">After an unexpected disconnect, requests wait this long for a new connection before they fail (0: fail at once).</param>
/// <param name="OpenTimeout">Opening keeps trying to connect for this long (0: one try).</param>
/// <param name="MultiConn">
/// Connections to open when the server advertises NBD_FLAG_CAN_MULTI_CONN (1 to <see cref="MaxMultiConn"/>);
/// a server without the flag gets one.
/// </param>
public sealed record NbdClientOptions(
    NbdServerAddress Server,
    string Export = "",
    Func<Stream, CancellationToken, ValueTask<Stream>>? UpgradeToTls = null,
    TimeSpan ReconnectDelay = default,
    TimeSpan OpenTimeout = default,
    int MultiConn = 1)
{
    /// <summary>The most connections <see cref="MultiConn"/> may ask for (the bound of the proposed QEMU patch that adds the option).</summary>
    public const int MaxMultiConn = 16;

    /// <summary>
    /// The longest one attempt (connecting, then the handshake) may take. A host that drops packets would
    /// otherwise hold a connect for the kernel's two minutes of retries, and a server that accepts but never
    /// greets for ever; the open's retries and the reconnect loop must get past either. (QEMU 7.2 has no such
    /// bound; 30 s is far above any handshake, TLS included, over a slow link.)
    /// </summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The longest closing the node may wait for the server: the close's flush and the replies to the requests
    /// on the wire share it. A server that stopped answering must not hold the node's close, or the daemon's quit,
    /// for ever; what it has not answered by then fails as on a lost connection.
    /// </summary>
    public TimeSpan CloseGrace { get; init; } = NbdClientConnection.CloseGrace;

    /// <summary>The clock <see cref="CloseGrace"/> is counted on (tests give a fake one).</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>The node's file name, as QEMU builds it (nbd_refresh_filename).</summary>
    /// <remarks>The default export (a URI without one) has no path part, in either form: <c>nbd+unix://?socket=PATH</c>.</remarks>
    public string FileName =>
        Server.IsUnix
            ? Export.Length == 0 ? $"nbd+unix://?socket={Server.UnixPath}" : $"nbd+unix:///{Export}?socket={Server.UnixPath}"
            : Export.Length == 0 ? $"nbd://{Server.Host}:{Server.Port}" : $"nbd://{Server.Host}:{Server.Port}/{Export}";
}
