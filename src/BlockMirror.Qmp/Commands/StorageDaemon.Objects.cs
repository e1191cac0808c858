using BlockMirror.Block.Qapi;
using BlockMirror.Net.Tls;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// object-add and object-del (and <c>--object</c>, which runs object-add): user-created objects by id in
/// <see cref="Block.Graph.BlockGraph.Objects"/>. The TLS credentials <c>tls-creds-x509</c> and
/// <c>tls-creds-psk</c> are implemented; QEMU's other object types are refused by name.
/// </summary>
public sealed partial class StorageDaemon
{
    /// <summary>QEMU 7.2's ObjectType enumeration: a type outside it is a bad value, one inside it but not here is unsupported.</summary>
    static readonly string[] QomTypes =
    [
        "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan", "colo-compare",
        "cryptodev-backend", "cryptodev-backend-builtin", "cryptodev-vhost-user", "dbus-vmstate", "filter-buffer",
        "filter-dump", "filter-mirror", "filter-redirector", "filter-replay", "filter-rewriter", "input-barrier",
        "input-linux", "iothread", "main-loop", "memory-backend-epc", "memory-backend-file", "memory-backend-memfd",
        "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest", "rng-builtin", "rng-egd", "rng-random",
        "secret", "secret_keyring", "sev-guest", "thread-context", "s390-pv-guest", "throttle-group", "tls-creds-anon",
        "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites", "x-remote-object", "x-vfio-user-server",
    ];

    /// <summary>TlsCredsProperties' members (verify-peer, dir, endpoint, priority, loaded) and those of one kind.</summary>
    static QapiObject TlsCredsProperties(string name, params QapiMember[] own) => new(name,
    [
        ("*verify-peer", QapiBuiltin.Bool), ("*dir", QapiBuiltin.Str), ("*endpoint", new QapiEnum("QCryptoTLSCredsEndpoint", ["client", "server"])),
        ("*priority", QapiBuiltin.Str), ("*loaded", QapiBuiltin.Bool), .. own,
    ]);

    /// <summary>ObjectOptions: a union on qom-type; the types with no variant here are refused by name.</summary>
    static readonly QapiObject ObjectOptions = QapiObject.Union("ObjectOptions",
        [("qom-type", new QapiEnum("ObjectType", QomTypes)), ("id", QapiBuiltin.Str)], "qom-type",
        new QapiVariant("tls-creds-psk", TlsCredsProperties("TlsCredsPskProperties", ("*username", QapiBuiltin.Str))),
        new QapiVariant("tls-creds-x509", TlsCredsProperties("TlsCredsX509Properties", ("*sanity-check", QapiBuiltin.Bool), ("*passwordid", QapiBuiltin.Str))));

    void AddObjectCommands()
    {
        Commands.Add("object-add", ObjectOptions, (arguments, _) =>
        {
            AddObject(arguments);
            return ValueTask.FromResult(Empty);
        });

        Commands.Add("object-del", new QapiObject("q_obj_object-del-arg", ("id", QapiBuiltin.Str)), (arguments, _) =>
        {
            var id = arguments.RequireString("id");
            arguments.CheckNoneUnexpected();
            // A user of the object (an NBD server, a client node) keeps its reference: deleting only takes the
            // id away, as QEMU's object-del of TLS credentials in use does.
            if (!Graph.Objects.Remove(id))
            {
                throw QmpException.Generic($"object '{id}' not found");
            }

            return ValueTask.FromResult(Empty);
        });
    }

    /// <summary>
    /// object-add: QEMU's order of checks: the arguments as QAPI reads them (type, id, the type's members,
    /// nothing unexpected), then the id's form, then whether it is taken, then the object's own loading.
    /// </summary>
    void AddObject(QmpArguments arguments)
    {
        var type = arguments.RequireString("qom-type");
        var id = arguments.RequireString("id");
        if (type is not ("tls-creds-x509" or "tls-creds-psk"))
        {
            throw QmpException.Generic($"object type '{type}' is not supported");
        }

        var verifyPeer = arguments.OptionalBool("verify-peer") ?? true;
        var dir = arguments.OptionalString("dir");
        var endpoint = arguments.OptionalString("endpoint") == "server" ? TlsEndpoint.Server : TlsEndpoint.Client;
        var priority = arguments.OptionalString("priority");
        var loaded = arguments.OptionalBool("loaded");
        bool sanityCheck = true;
        string? passwordId = null, username = null;
        if (type == "tls-creds-x509")
        {
            sanityCheck = arguments.OptionalBool("sanity-check") ?? true;
            passwordId = arguments.OptionalString("passwordid");
        }
        else
        {
            username = arguments.OptionalString("username");
        }

        arguments.CheckNoneUnexpected();
        if (!IsIdentifier(id))
        {
            throw QmpException.Generic("Parameter 'id' expects an identifier");
        }

        if (Graph.Objects.Find(id) is not null)
        {
            throw QmpException.Generic($"attempt to add duplicate property '{id}' to object (type 'container')");
        }

        if (loaded is not null)
        {
            throw QmpException.Generic($"Property '{type}.loaded' is not writable");
        }

        if (priority is not null)
        {
            // GnuTLS priority strings have no SslStream equivalent: refused rather than ignored.
            throw QmpException.Generic("TLS priority strings ('priority') are not supported");
        }

        if (dir is null)
        {
            throw QmpException.Generic("Missing 'dir' property value");
        }

        TlsCredentials credentials;
        try
        {
            if (type == "tls-creds-x509")
            {
                var x509 = X509Credentials.Load(id, endpoint, dir, verifyPeer, sanityCheck);
                if (passwordId is not null)
                {
                    // Encrypted keys need a secret object, and none can be created here.
                    throw QmpException.Generic($"No secret with id '{passwordId}'");
                }

                credentials = x509;
            }
            else
            {
                credentials = PskCredentials.Load(id, endpoint, dir, verifyPeer, username);
            }
        }
        catch (TlsException ex)
        {
            throw QmpException.Generic(ex.Message);
        }

        if (!Graph.Objects.TryAdd(id, credentials))
        {
            throw QmpException.Generic($"attempt to add duplicate property '{id}' to object (type 'container')");
        }
    }

    /// <summary>QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'.</summary>
    static bool IsIdentifier(string id) =>
        id.Length > 0 && char.IsAsciiLetter(id[0]) && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_');

    /// <summary>
    /// The TLS credentials <c>tls-creds=ID</c> names for a server (nbd-server-start, <c>--nbd-server</c>), in
    /// QEMU's words when there are none or they are for the other end.
    /// </summary>
    TlsCredentials FindServerCredentials(string id)
    {
        try
        {
            return TlsCredentials.Require(Graph.Objects.Find(id), id, TlsEndpoint.Server);
        }
        catch (TlsException ex)
        {
            throw QmpException.Generic(ex.Message);
        }
    }
}
