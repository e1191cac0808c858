using BlockMirror.Block.Qapi;

namespace BlockMirror.Nbd;

/// <summary>
/// QAPI's socket addresses (qapi/sockets.json, QEMU 7.2), as the NBD client's <c>server</c> and the QMP
/// server's <c>nbd-server-start</c> read them. Each reader refuses by name what it cannot do (vsock, fd, mptcp, ...).
/// </summary>
public static class SocketAddressSchema
{
    static readonly QapiBuiltin Str = QapiBuiltin.Str, Bool = QapiBuiltin.Bool;

    public static QapiEnum Type { get; } = new("SocketAddressType", ["inet", "unix", "vsock", "fd"]);

    public static QapiObject Inet { get; } = new("InetSocketAddress",
        ("host", Str), ("port", Str), ("*numeric", Bool), ("*to", QapiBuiltin.UInt32), ("*ipv4", Bool), ("*ipv6", Bool), ("*keep-alive", Bool),
        ("*mptcp", Bool));

    public static QapiObject Unix { get; } = new("UnixSocketAddress", ("path", Str), ("*abstract", Bool), ("*tight", Bool));

    public static QapiObject Vsock { get; } = new("VsockSocketAddress", ("cid", Str), ("port", Str));

    public static QapiObject Fd { get; } = new("String", ("str", Str));

    /// <summary>SocketAddress: the flat union (the NBD client's server, the command line's addresses).</summary>
    public static QapiObject Flat { get; } = QapiObject.Union("SocketAddress", [("type", Type)], "type",
        new("inet", Inet), new("unix", Unix), new("vsock", Vsock), new("fd", Fd));

    /// <summary>SocketAddressLegacy: nbd-server-start's form, each variant's members inside <c>data</c>.</summary>
    public static QapiObject Legacy { get; } = QapiObject.Union("SocketAddressLegacy", [("type", Type)], "type",
        new("inet", new("InetSocketAddressWrapper", ("data", Inet))),
        new("unix", new("UnixSocketAddressWrapper", ("data", Unix))),
        new("vsock", new("VsockSocketAddressWrapper", ("data", Vsock))),
        new("fd", new("StringWrapper", ("data", Fd))));
}
