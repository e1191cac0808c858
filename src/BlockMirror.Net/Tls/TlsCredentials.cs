namespace BlockMirror.Net.Tls;

/// <summary>
/// A QEMU <c>tls-creds-*</c> object: what one end of a TLS session proves itself with and trusts, loaded from
/// QEMU's directory layout when created (a missing or bad file fails creation, as in QEMU). A protocol
/// turns a plain stream into a TLS one through it: the NBD server at NBD_OPT_STARTTLS, the NBD client after it.
/// </summary>
public abstract class TlsCredentials(string id, TlsEndpoint endpoint, string directory, bool verifyPeer)
{
    /// <summary>The object's id (<c>tls-creds=ID</c> names it).</summary>
    public string Id { get; } = id;

    public TlsEndpoint Endpoint { get; } = endpoint;

    /// <summary>The credentials directory (<c>dir=</c>).</summary>
    public string Directory { get; } = directory;

    /// <summary>
    /// Whether the peer must prove itself (<c>verify-peer</c>, on by default): a server then requires a client
    /// certificate that its CA signed; a client checks the server's certificate and host name.
    /// </summary>
    public bool VerifyPeer { get; } = verifyPeer;

    /// <summary>The QOM type, as <c>object-add</c> spells it.</summary>
    public abstract string QomType { get; }

    /// <summary>
    /// Runs the server side of the TLS handshake over <paramref name="stream"/>; the returned stream owns it.
    /// </summary>
    /// <exception cref="TlsException">The handshake failed or the client is not trusted; the stream is disposed.</exception>
    public abstract ValueTask<Stream> AuthenticateAsServerAsync(Stream stream, CancellationToken cancellationToken);

    /// <summary>
    /// Runs the client side of the TLS handshake; <paramref name="hostname"/> (null: not checked) is the name the
    /// server's certificate must carry.
    /// </summary>
    /// <exception cref="TlsException">The handshake failed or the server is not trusted; the stream is disposed.</exception>
    public abstract ValueTask<Stream> AuthenticateAsClientAsync(Stream stream, string? hostname, CancellationToken cancellationToken);

    /// <summary>
    /// The credentials an option names by id (<c>tls-creds=ID</c>), given what the object store holds under
    /// that id: they must exist, be TLS credentials and be for <paramref name="endpoint"/> (QEMU's words).
    /// </summary>
    /// <exception cref="TlsException">No such object, another kind of object, or credentials for the other end.</exception>
    public static TlsCredentials Require(object? found, string id, TlsEndpoint endpoint)
    {
        if (found is null)
        {
            throw new TlsException($"No TLS credentials with id '{id}'");
        }

        if (found is not TlsCredentials credentials)
        {
            throw new TlsException($"Object with id '{id}' is not TLS credentials");
        }

        return credentials.Endpoint == endpoint
            ? credentials
            : throw new TlsException($"Expected TLS credentials for a {(endpoint == TlsEndpoint.Server ? "server" : "client")} endpoint");
    }

    /// <summary>
    /// QEMU's path of a credentials file, checked for read access: "Unable to access credentials PATH: REASON"
    /// when it is required, null when it is optional and not there.
    /// </summary>
    protected static string? FindFile(string directory, string name, bool required)
    {
        var path = Path.Combine(directory, name);
        string reason;
        try
        {
            using (File.OpenHandle(path))
            {
                return path;
            }
        }
        catch (FileNotFoundException)
        {
            reason = "No such file or directory";
        }
        catch (DirectoryNotFoundException)
        {
            reason = "No such file or directory";
        }
        catch (UnauthorizedAccessException)
        {
            reason = System.IO.Directory.Exists(path) ? "Is a directory" : "Permission denied";
        }
        catch (IOException ex)
        {
            reason = ex.Message;
        }

        return required ? throw new TlsException($"Unable to access credentials {path}: {reason}") : null;
    }
}
