using System.ComponentModel;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace BlockMirror.Net.Tls;

/// <summary>
/// QEMU's <c>tls-creds-x509</c>: certificates in QEMU's layout (<c>ca-cert.pem</c>; <c>server-cert.pem</c> and
/// <c>server-key.pem</c> for a server, optionally <c>client-cert.pem</c> and <c>client-key.pem</c> for a
/// client), sessions through .NET's <see cref="SslStream"/>. <c>ca-cert.pem</c> is the only trust root: a peer's
/// certificate must chain to it, whatever the system trusts.
/// </summary>
public sealed class X509Credentials : TlsCredentials
{
    public const string CaCertFile = "ca-cert.pem", CaCrlFile = "ca-crl.pem", ServerCertFile = "server-cert.pem",
        ServerKeyFile = "server-key.pem", ClientCertFile = "client-cert.pem", ClientKeyFile = "client-key.pem";

    readonly X509Certificate2Collection _authorities;
    readonly X509Certificate2? _own;
    readonly SslStreamCertificateContext? _context;

    X509Credentials(string id, TlsEndpoint endpoint, string directory, bool verifyPeer, X509Certificate2Collection authorities, X509Certificate2? own)
        : base(id, endpoint, directory, verifyPeer)
    {
        _authorities = authorities;
        _own = own;
        if (own is not null && endpoint == TlsEndpoint.Server)
        {
            _context = SslStreamCertificateContext.Create(own, additionalCertificates: null, offline: true);
        }
    }

    public override string QomType => "tls-creds-x509";

    /// <summary>
    /// Loads the credentials from <paramref name="directory"/> as QEMU does when the object is created: the
    /// files the endpoint needs must be readable, then (<paramref name="sanityCheck"/>) the certificates are
    /// checked, then the certificate and key are loaded as a pair.
    /// </summary>
    /// <exception cref="TlsException">A file is missing, unreadable or fails a check (QEMU's message).</exception>
    public static X509Credentials Load(string id, TlsEndpoint endpoint, string directory, bool verifyPeer, bool sanityCheck, TimeProvider? time = null)
    {
        var isServer = endpoint == TlsEndpoint.Server;
        var caFile = FindFile(directory, CaCertFile, required: true)!;
        if (isServer && FindFile(directory, CaCrlFile, required: false) is not null)
        {
            // Refused rather than ignored: a revoked client would be let in.
            throw new TlsException($"Certificate revocation lists ({Path.Combine(directory, CaCrlFile)}) are not supported");
        }

        var certFile = FindFile(directory, isServer ? ServerCertFile : ClientCertFile, required: isServer);
        var keyFile = FindFile(directory, isServer ? ServerKeyFile : ClientKeyFile, required: isServer);

        var authorities = new X509Certificate2Collection();
        try
        {
            authorities.ImportFromPemFile(caFile);
        }
        catch (Exception ex) when (ex is CryptographicException or IOException)
        {
            throw new TlsException($"Unable to import CA certificate list {caFile}", ex);
        }

        if (authorities.Count == 0)
        {
            throw new TlsException($"Unable to import CA certificate list {caFile}");
        }

        if (sanityCheck)
        {
            X509Certificate2? plain = null;
            if (certFile is not null)
            {
                try
                {
                    plain = X509CertificateLoader.LoadCertificate(PemCertificate(certFile));
                }
                catch (Exception ex) when (ex is CryptographicException or IOException or FormatException)
                {
                    throw new TlsException($"Unable to import {(isServer ? "server" : "client")} certificate {certFile}: {ex.Message}", ex);
                }
            }

            using (plain)
            {
                X509CertificateChecks.Check(plain, certFile, authorities, caFile, isServer, (time ?? TimeProvider.System).GetUtcNow());
            }
        }

        X509Certificate2? own = null;
        if (certFile is not null && keyFile is not null)
        {
            try
            {
                own = X509Certificate2.CreateFromPemFile(certFile, keyFile);
            }
            catch (Exception ex) when (ex is CryptographicException or IOException or ArgumentException)
            {
                throw new TlsException($"Cannot load certificate '{certFile}' & key '{keyFile}': {ex.Message}", ex);
            }
        }

        return new X509Credentials(id, endpoint, directory, verifyPeer, authorities, own);
    }

    /// <summary>The DER bytes of the first certificate in a PEM file.</summary>
    static byte[] PemCertificate(string file)
    {
        var text = File.ReadAllText(file);
        if (!PemEncoding.TryFind(text, out var fields) || text[fields.Label] is not "CERTIFICATE")
        {
            throw new FormatException("no PEM certificate found");
        }

        return Convert.FromBase64String(text[fields.Base64Data]);
    }

    public override async ValueTask<Stream> AuthenticateAsServerAsync(Stream stream, CancellationToken cancellationToken)
    {
        string? rejection = null;
        var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
        var options = new SslServerAuthenticationOptions
        {
            ServerCertificateContext = _context ?? throw new TlsException($"TLS credentials '{Id}' have no server certificate"),
            // QEMU's verify-peer on a server: a client certificate is asked for and must chain to the CA.
            ClientCertificateRequired = VerifyPeer,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            RemoteCertificateValidationCallback = (_, certificate, chain, _) =>
            {
                if (!VerifyPeer)
                {
                    return true;
                }

                rejection = certificate is null ? "No certificate peers" : PeerFailure(certificate, chain, hostname: null, SslPolicyErrors.None);
                return rejection is null;
            },
        };
        await HandshakeAsync(ssl, s => s.AuthenticateAsServerAsync(options, cancellationToken), () => rejection).ConfigureAwait(false);
        return ssl;
    }

    public override async ValueTask<Stream> AuthenticateAsClientAsync(Stream stream, string? hostname, CancellationToken cancellationToken)
    {
        string? rejection = null;
        var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
        var options = new SslClientAuthenticationOptions
        {
            // The name sent (SNI) and checked; an empty one sends none (a Unix socket has no host name).
            TargetHost = hostname ?? "",
            ClientCertificates = _own is null ? null : [_own],
            LocalCertificateSelectionCallback = _own is null ? null : (_, _, _, _, _) => _own,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
            {
                if (!VerifyPeer)
                {
                    return true;
                }

                rejection = certificate is null ? "No certificate peers" : PeerFailure(certificate, chain, hostname, errors);
                return rejection is null;
            },
        };
        await HandshakeAsync(ssl, s => s.AuthenticateAsClientAsync(options, cancellationToken), () => rejection).ConfigureAwait(false);
        return ssl;
    }

    /// <summary>
    /// Why the peer's certificate is not trusted (QEMU's words), or null: it must chain to our CA, be in its
    /// validity period and, when a host name is to be checked, carry it.
    /// </summary>
    string? PeerFailure(X509Certificate certificate, X509Chain? presented, string? hostname, SslPolicyErrors errors)
    {
        var peer = certificate as X509Certificate2 ?? X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
        var now = DateTime.UtcNow;
        if (peer.NotAfter.ToUniversalTime() < now)
        {
            return "The certificate has expired";
        }

        if (peer.NotBefore.ToUniversalTime() > now)
        {
            return "The certificate is not yet activated";
        }

        // Intermediates the peer sent may help build the chain; trust still comes from ca-cert.pem alone.
        var intermediates = new X509Certificate2Collection();
        if (presented is not null)
        {
            foreach (var element in presented.ChainElements)
            {
                intermediates.Add(element.Certificate);
            }
        }

        if (X509CertificateChecks.ChainFailure(peer, _authorities, intermediates) is { } reason)
        {
            return reason;
        }

        if (Endpoint == TlsEndpoint.Client && hostname is null)
        {
            // A client that trusts any certificate its CA signed, for any name, trusts too much: QEMU refuses.
            return "No hostname for certificate validation";
        }

        // .NET checked the name against TargetHost (SAN, or CN without SANs) while building its own chain.
        if (hostname is not null && (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
        {
            return $"Certificate does not match the hostname {hostname}";
        }

        return null;
    }

    static async Task HandshakeAsync(SslStream ssl, Func<SslStream, Task> authenticate, Func<string?> rejection)
    {
        try
        {
            await authenticate(ssl).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException or OperationCanceledException or Win32Exception)
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            if (ex is OperationCanceledException)
            {
                throw;
            }

            // Our own reason for refusing the peer, in QEMU's words, says more than the handshake's failure.
            throw new TlsException(rejection() ?? $"TLS handshake failed: {Describe(ex)}", ex);
        }
    }

    /// <summary>The innermost message: .NET wraps OpenSSL's reason ("certificate required", "unknown ca") in generic words.</summary>
    static string Describe(Exception ex)
    {
        var inner = ex;
        while (inner.InnerException is not null)
        {
            inner = inner.InnerException;
        }

        return ReferenceEquals(inner, ex) ? ex.Message : $"{ex.Message} ({inner.Message})";
    }
}
