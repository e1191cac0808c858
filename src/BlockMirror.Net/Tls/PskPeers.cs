using System.Text;
using Org.BouncyCastle.Security;
using Org.BouncyCastle.Tls;
using Org.BouncyCastle.Tls.Crypto.Impl.BC;

namespace BlockMirror.Net.Tls;

/// <summary>
/// BouncyCastle's TLS-PSK ends, configured as QEMU's GnuTLS ones meet them: TLS 1.2 with the (EC)DHE-PSK and
/// PSK cipher suites GnuTLS's <c>NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK</c> offers; the identity is the user name.
/// </summary>
static class PskPeers
{
    static BcTlsCrypto NewCrypto() => new(new SecureRandom());

    /// <summary>A server that looks the client's identity up in <c>keys.psk</c> at each handshake.</summary>
    public sealed class Server(Func<string, byte[]?> lookup) : PskTlsServer(NewCrypto(), new Identities(lookup))
    {
        /// <summary>The identity the client logged in with, once the handshake is done.</summary>
        public string? ClientIdentity { get; private set; }

        public override void NotifyHandshakeComplete()
        {
            base.NotifyHandshakeComplete();
            ClientIdentity = m_context.SecurityParameters.PskIdentity is { } identity ? Encoding.UTF8.GetString(identity) : null;
        }

        sealed class Identities(Func<string, byte[]?> lookup) : TlsPskIdentityManager
        {
            public byte[]? GetHint() => null;

            // An unknown user gets no key: the handshake fails with unknown_psk_identity.
            public byte[]? GetPsk(byte[] identity) => lookup(Encoding.UTF8.GetString(identity));
        }
    }

    /// <summary>A client that logs in as one user with its key.</summary>
    public sealed class Client(string username, byte[] key) : PskTlsClient(NewCrypto(), new BasicTlsPskIdentity(username, key));
}
