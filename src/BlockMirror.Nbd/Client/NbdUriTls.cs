namespace BlockMirror.Nbd.Client;

/// <summary>
/// What an <c>nbds://</c> or <c>nbds+unix://</c> URI says about TLS: the credentials (<c>tls-creds=ID</c>,
/// an object made with <c>--object</c> or <c>object-add</c>; or <c>tls-certificates=DIR</c>, a directory in
/// QEMU's and libnbd's layout; neither: <see cref="DefaultCertificates"/>) and <c>tls-hostname</c>.
/// </summary>
/// <remarks>
/// Why these: the URI says TLS must be used, so it needs credentials. QEMU names them by object id
/// (<c>tls-creds</c>), libnbd by directory (<c>tls-certificates</c>, with the same file names:
/// <c>ca-cert.pem</c>, <c>client-cert.pem</c>, <c>client-key.pem</c>), so a name that works with nbdinfo or
/// nbdcopy works here. With neither, the x509 client credentials come from QEMU's (and libvirt's) default
/// directory: TLS is never dropped, and a directory that is not there is refused by name. The server's
/// certificate is checked against that CA, for the host connected to unless <c>tls-hostname</c> says otherwise.
/// </remarks>
/// <param name="Creds">The id of TLS credentials among the graph's objects, or null.</param>
/// <param name="Certificates">The directory to load x509 client credentials from, when <paramref name="Creds"/> is null.</param>
/// <param name="Hostname">The name the server's certificate must carry, or null for the host connected to.</param>
public sealed record NbdUriTls(string? Creds, string? Certificates, string? Hostname)
{
    /// <summary>QEMU's default x509 directory (and libvirt's default_tls_x509_cert_dir).</summary>
    public const string DefaultCertificates = "/etc/pki/qemu";

    /// <summary>
    /// Takes the TLS parameters out of <paramref name="parameters"/>: null when one repeats, has no value, or
    /// both <c>tls-creds</c> and <c>tls-certificates</c> are given.
    /// </summary>
    internal static NbdUriTls? Take(List<(string Name, string? Value)> parameters)
    {
        string? creds = null, certificates = null, hostname = null;
        for (var i = parameters.Count - 1; i >= 0; i--)
        {
            var (name, value) = parameters[i];
            var taken = name switch
            {
                "tls-creds" => Set(ref creds, value),
                "tls-certificates" => Set(ref certificates, value),
                "tls-hostname" => Set(ref hostname, value),
                _ => (bool?)null,
            };
            if (taken == false)
            {
                return null;
            }

            if (taken == true)
            {
                parameters.RemoveAt(i);
            }
        }

        return creds is not null && certificates is not null ? null : new NbdUriTls(creds, creds is null ? certificates ?? DefaultCertificates : null, hostname);
    }

    /// <summary>A parameter given once, with a value.</summary>
    static bool Set(ref string? slot, string? value)
    {
        if (slot is not null || string.IsNullOrEmpty(value))
        {
            return false;
        }

        slot = value;
        return true;
    }
}
