using System.Security.Cryptography.X509Certificates;

namespace BlockMirror.Net.Tls;

/// <summary>
/// QEMU's sanity checks of x509 credentials when they are loaded (<c>sanity-check=on</c>, the default): our own
/// certificate and each CA certificate are in their validity period, have the basic constraints, key usage and
/// purpose their role needs, and our certificate verifies against the CA. Failing here names the file, at
/// creation, instead of failing every handshake later. Messages are QEMU's.
/// </summary>
static class X509CertificateChecks
{
    const string ServerAuth = "1.3.6.1.5.5.7.3.1";
    const string ClientAuth = "1.3.6.1.5.5.7.3.2";
    const string AnyPurpose = "2.5.29.37.0";

    /// <summary>Checks <paramref name="own"/> (null: none, a client without a certificate) and the CA list.</summary>
    public static void Check(X509Certificate2? own, string? ownFile, X509Certificate2Collection authorities, string authorityFile, bool isServer, DateTimeOffset now)
    {
        if (own is not null)
        {
            CheckCertificate(own, ownFile!, isServer, isAuthority: false, now);
        }

        foreach (var authority in authorities)
        {
            CheckCertificate(authority, authorityFile, isServer, isAuthority: true, now);
        }

        if (own is not null && authorities.Count > 0 && ChainFailure(own, authorities) is { } reason)
        {
            throw new TlsException($"Our own certificate {ownFile} failed validation against {authorityFile}: {reason}");
        }
    }

    static void CheckCertificate(X509Certificate2 certificate, string file, bool isServer, bool isAuthority, DateTimeOffset now)
    {
        var role = isAuthority ? "CA" : isServer ? "server" : "client";
        if (certificate.NotAfter.ToUniversalTime() < now.UtcDateTime)
        {
            throw new TlsException($"The {role} certificate {file} has expired");
        }

        if (certificate.NotBefore.ToUniversalTime() > now.UtcDateTime)
        {
            throw new TlsException($"The {role} certificate {file} is not yet active");
        }

        var constraints = certificate.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault();
        if (constraints is { CertificateAuthority: true } && !isAuthority)
        {
            throw new TlsException($"The certificate {file} basic constraints show a CA, but we need one for a {(isServer ? "server" : "client")}");
        }

        if (isAuthority && constraints is null)
        {
            throw new TlsException($"The certificate {file} is missing basic constraints for a CA");
        }

        if (isAuthority && constraints is { CertificateAuthority: false })
        {
            throw new TlsException($"The certificate {file} basic constraints do not show a CA");
        }

        // A usage or purpose that is not critical is advice, not a restriction (QEMU and GnuTLS read it so).
        if (certificate.Extensions.OfType<X509KeyUsageExtension>().FirstOrDefault() is { Critical: true } usage)
        {
            if (isAuthority && (usage.KeyUsages & X509KeyUsageFlags.KeyCertSign) == 0)
            {
                throw new TlsException($"Certificate {file} usage does not permit certificate signing");
            }

            if (!isAuthority && (usage.KeyUsages & X509KeyUsageFlags.DigitalSignature) == 0)
            {
                throw new TlsException($"Certificate {file} usage does not permit digital signature");
            }

            if (!isAuthority && (usage.KeyUsages & X509KeyUsageFlags.KeyEncipherment) == 0)
            {
                throw new TlsException($"Certificate {file} usage does not permit key encipherment");
            }
        }

        if (!isAuthority && certificate.Extensions.OfType<X509EnhancedKeyUsageExtension>().FirstOrDefault() is { Critical: true } purposes)
        {
            var oids = purposes.EnhancedKeyUsages.Cast<System.Security.Cryptography.Oid>().Select(o => o.Value).ToList();
            if (!oids.Contains(AnyPurpose) && !oids.Contains(isServer ? ServerAuth : ClientAuth))
            {
                throw new TlsException($"Certificate {file} purpose does not allow use with a TLS {(isServer ? "server" : "client")}");
            }
        }
    }

    /// <summary>
    /// Why <paramref name="certificate"/> does not chain to one of <paramref name="authorities"/> (the only
    /// trust roots: the system's store plays no part), in QEMU's words; null when it does.
    /// </summary>
    public static string? ChainFailure(X509Certificate2 certificate, X509Certificate2Collection authorities, X509Certificate2Collection? intermediates = null)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.DisableCertificateDownloads = true;
        if (intermediates is not null)
        {
            chain.ChainPolicy.ExtraStore.AddRange(intermediates);
        }

        if (chain.Build(certificate))
        {
            return null;
        }

        var status = chain.ChainStatus.Aggregate(X509ChainStatusFlags.NoError, (all, s) => all | s.Status);
        return status switch
        {
            _ when status.HasFlag(X509ChainStatusFlags.Revoked) => "The certificate has been revoked",
            _ when status.HasFlag(X509ChainStatusFlags.NotTimeValid) => "The certificate has expired",
            _ when (status & (X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain)) != 0 => "The certificate hasn't got a known issuer",
            _ when status.HasFlag(X509ChainStatusFlags.NotSignatureValid) => "The certificate is not trusted",
            _ => "Invalid certificate",
        };
    }
}
