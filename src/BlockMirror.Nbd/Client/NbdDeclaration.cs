using System.Net.Sockets;
using BlockMirror.Block.Drivers;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// The <c>nbd</c> driver's declaration (QEMU 7.2's BlockdevOptionsNbd): <c>server</c> (a SocketAddress:
/// unix or inet), <c>export</c>, <c>tls-creds</c>, <c>tls-hostname</c>, <c>reconnect-delay</c>,
/// <c>open-timeout</c>; and <c>multi-conn</c>, which QEMU 7.2 lacks (a later proposal's option: see
/// <see cref="NbdClientOptions.MultiConn"/>). It lives beside the client; whoever composes the program adds it to the registry
/// (<see cref="NbdDrivers.Register"/>).
/// </summary>
public static class NbdDeclaration
{
    /// <summary>
    /// BlockMirror's option for x509 client credentials loaded from a directory (libnbd's name), which an
    /// <c>nbds://</c> file name sets when it names no <c>tls-creds</c> object. QEMU 7.2 has no such option.
    /// </summary>
    public const string TlsCertificatesOption = "tls-certificates";

    public static DriverDeclaration Driver { get; } = new(DriverNames.Nbd, DriverKind.Protocol, Read)
    {
        // nbd://, nbd+tcp://, nbd+unix:// and nbd:... file names (QEMU's three nbd protocol names).
        Protocols = NbdFileName.Protocols,
        ParseFileName = NbdFileName.WriteOptions,
        // QEMU 7.2's BlockdevOptionsNbd, then ours: tls-certificates and multi-conn.
        Options = new QapiObject("BlockdevOptionsNbd",
            ("server", SocketAddressSchema.Flat), ("*export", QapiBuiltin.Str), ("*tls-creds", QapiBuiltin.Str), ("*tls-hostname", QapiBuiltin.Str),
            ("*x-dirty-bitmap", QapiBuiltin.Str), ("*reconnect-delay", QapiBuiltin.UInt32), ("*open-timeout", QapiBuiltin.UInt32),
            ("*" + TlsCertificatesOption, QapiBuiltin.Str), ("*multi-conn", QapiBuiltin.UInt32)),
    };

    static NodeOpener Read(NodeOptions node)
    {
        var options = node.Options;
        var server = ReadServer(options.OptionalObject("server") ?? throw options.Invalid($"Parameter '{options.Prefix}server' is missing"));
        var export = options.OptionalString("export") ?? "";
        if (options.OptionalString("x-dirty-bitmap") is not null)
        {
            throw options.Invalid("x-dirty-bitmap is not supported: BlockMirror's NBD client reads base:allocation only");
        }

        var tlsCreds = options.OptionalString("tls-creds");
        var tlsCertificates = options.OptionalString(TlsCertificatesOption);
        if (tlsCreds is not null && tlsCertificates is not null)
        {
            throw options.Invalid($"'{options.Prefix}tls-creds' and '{options.Prefix}{TlsCertificatesOption}' cannot both be given");
        }

        // The name the server's certificate must carry; without it, the host connected to (a Unix socket has
        // none). QEMU takes it without tls-creds too, where it means nothing.
        var tlsHostname = options.OptionalString("tls-hostname") ?? (server.IsUnix ? null : server.Host);
        var reconnectDelay = TimeSpan.FromSeconds(options.OptionalUInt32("reconnect-delay") ?? 0);
        var openTimeout = TimeSpan.FromSeconds(options.OptionalUInt32("open-timeout") ?? 0);
        var multiConn = options.OptionalUInt32("multi-conn") ?? 1;
        if (multiConn is < 1 or > NbdClientOptions.MaxMultiConn)
        {
            throw options.Invalid($"Parameter '{options.Prefix}multi-conn' must be between 1 and {NbdClientOptions.MaxMultiConn}, not {multiConn}");
        }

        return opening =>
        {
            // Looked up when the node opens, before connecting, as QEMU's nbd_open does.
            var upgrade = tlsCreds is not null ? NbdClientTls.Upgrade(opening.Graph, tlsCreds, tlsHostname)
                : tlsCertificates is not null ? NbdClientTls.Upgrade(tlsCertificates, tlsHostname)
                : null;
            var client = new NbdClientOptions(server, export, upgrade, reconnectDelay, openTimeout, (int)multiConn);
            return NbdClientDriver.OpenAsync(opening.Graph, node.NodeName, client, node.ReadOnly, opening.CancellationToken);
        };
    }

    /// <summary>QEMU's SocketAddress, the flat union on <c>type</c>; vsock and fd are not offered here.</summary>
    static NbdServerAddress ReadServer(OptionReader server)
    {
        var type = server.OptionalEnum("type", "inet", "unix", "vsock", "fd")
            ?? throw server.Invalid($"Parameter '{server.Prefix}type' is missing");
        switch (type)
        {
            case "unix":
            {
                var path = server.RequireString("path");
                var address = new NbdServerAddress { UnixPath = path, Abstract = server.OptionalBool("abstract") ?? false };
                // 'tight' only shapes an abstract name's length; BlockMirror's abstract names are always tight.
                if (server.OptionalBool("tight") == false && address.Abstract)
                {
                    throw server.Invalid("abstract socket addresses that are not tight are not supported");
                }

                return address;
            }

            case "inet":
            {
                var host = server.RequireString("host");
                var port = server.RequireString("port");
                bool ipv4 = server.OptionalBool("ipv4") ?? false, ipv6 = server.OptionalBool("ipv6") ?? false;
                if (server.OptionalUInt32("to") is not null)
                {
                    throw server.Invalid("'to' (a port range) is for listening sockets; a client connects to one port");
                }

                if (server.OptionalBool("mptcp") == true)
                {
                    throw server.Invalid("mptcp is not supported");
                }

                return new NbdServerAddress
                {
                    Host = host,
                    Port = port,
                    Numeric = server.OptionalBool("numeric") ?? false,
                    KeepAlive = server.OptionalBool("keep-alive") ?? false,
                    Family = ipv4 == ipv6 ? null : ipv4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6,
                };
            }

            default:
                throw server.Invalid($"NBD server address type '{type}' is not supported: use 'unix' or 'inet'");
        }
    }
}
