using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace BlockMirror.TestKit;

/// <summary>
/// Certificates for TLS tests in QEMU's directory layout (<c>--object tls-creds-x509,dir=DIR</c>): a fresh CA
/// and a server and a client certificate it signed, made in-process with .NET's <see cref="CertificateRequest"/>
/// (no certtool or openssl needed). The server certificate names <c>localhost</c>, <c>127.0.0.1</c> and <c>::1</c>.
/// Each call makes a new CA, so two directories do not trust each other: a test that needs an untrusted
/// peer takes its certificate from another directory.
/// </summary>
public static class TlsCertificates
{
    public const string CaCert = "ca-cert.pem", ServerCert = "server-cert.pem", ServerKey = "server-key.pem",
        ClientCert = "client-cert.pem", ClientKey = "client-key.pem", PskKeys = "keys.psk";

    /// <summary>
    /// Writes <c>ca-cert.pem</c>, <c>server-cert.pem</c>, <c>server-key.pem</c>, <c>client-cert.pem</c> and
    /// <c>client-key.pem</c> into <paramref name="dir"/> (created if needed). With <paramref name="serverExpired"/>
    /// the server certificate's validity ended yesterday.
    /// </summary>
    public static string CreateX509(string dir, string serverName = "localhost", bool serverExpired = false)
    {
        Directory.CreateDirectory(dir);
        var now = DateTimeOffset.UtcNow;
        using var caKey = RSA.Create(2048);
        var caRequest = new CertificateRequest("CN=BlockMirror test CA", caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        using var ca = caRequest.CreateSelfSigned(now.AddDays(-4), now.AddDays(2));
        File.WriteAllText(Path.Combine(dir, CaCert), ca.ExportCertificatePem());

        var from = serverExpired ? now.AddDays(-3) : now.AddHours(-1);
        var until = serverExpired ? now.AddDays(-1) : now.AddDays(1);
        WriteLeaf(dir, ca, $"CN={serverName}", "1.3.6.1.5.5.7.3.1", ServerCert, ServerKey, from, until, serverName);
        WriteLeaf(dir, ca, "CN=BlockMirror test client", "1.3.6.1.5.5.7.3.2", ClientCert, ClientKey, now.AddHours(-1), now.AddDays(1), null);
        return dir;
    }

    /// <summary>Writes <c>keys.psk</c> with one <c>username:hexkey</c> line per user.</summary>
    public static string CreatePsk(string dir, params (string Username, byte[] Key)[] users)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllLines(Path.Combine(dir, PskKeys), users.Select(u => $"{u.Username}:{Convert.ToHexStringLower(u.Key)}"));
        return dir;
    }

    static void WriteLeaf(string dir, X509Certificate2 ca, string subject, string purpose, string certFile, string keyFile,
        DateTimeOffset from, DateTimeOffset until, string? dnsName)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(purpose)], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        if (dnsName is not null)
        {
            var names = new SubjectAlternativeNameBuilder();
            names.AddDnsName(dnsName);
            names.AddIpAddress(IPAddress.Loopback);
            names.AddIpAddress(IPAddress.IPv6Loopback);
            request.CertificateExtensions.Add(names.Build());
        }

        var serial = RandomNumberGenerator.GetBytes(12);
        serial[0] &= 0x7f;
        using var certificate = request.Create(ca, from, until, serial);
        File.WriteAllText(Path.Combine(dir, certFile), certificate.ExportCertificatePem());
        File.WriteAllText(Path.Combine(dir, keyFile), key.ExportPkcs8PrivateKeyPem());
    }
}
