namespace BlockMirror.Net.Tls;

/// <summary>
/// QEMU's <c>tls-creds-psk</c>: pre-shared keys in <c>keys.psk</c>, one <c>username:hexkey</c> per line. A
/// client uses the key of its <c>username</c> (QEMU's default: <c>qemu</c>); a server accepts any listed user.
/// </summary>
public sealed class PskCredentials : TlsCredentials
{
    public const string KeyFile = "keys.psk";

    /// <summary>The user a client names when none is given, as QEMU.</summary>
    public const string DefaultUsername = "qemu";

    readonly string _keyFile;

    PskCredentials(string id, TlsEndpoint endpoint, string directory, bool verifyPeer, string keyFile, string? username, byte[]? clientKey)
        : base(id, endpoint, directory, verifyPeer)
    {
        _keyFile = keyFile;
        Username = username;
        ClientKey = clientKey;
    }

    public override string QomType => "tls-creds-psk";

    /// <summary>The user a client logs in as (null for a server).</summary>
    public string? Username { get; }

    /// <summary>The client's key, read when the credentials were created.</summary>
    internal byte[]? ClientKey { get; }

    /// <summary>
    /// Loads the credentials as QEMU does at creation: <c>keys.psk</c> must be readable, and a client's user
    /// must be in it with a key in hex.
    /// </summary>
    /// <exception cref="TlsException">QEMU's words for what is wrong.</exception>
    public static PskCredentials Load(string id, TlsEndpoint endpoint, string directory, bool verifyPeer, string? username)
    {
        var keyFile = FindFile(directory, KeyFile, required: true)!;
        if (endpoint == TlsEndpoint.Server)
        {
            if (username is not null)
            {
                throw new TlsException("username should not be set when endpoint=server");
            }

            return new PskCredentials(id, endpoint, directory, verifyPeer, keyFile, null, null);
        }

        username ??= DefaultUsername;
        var hex = FindKey(keyFile, username) ?? throw new TlsException($"Username {username} not found in PSK file {keyFile}");
        byte[] key;
        try
        {
            key = Convert.FromHexString(hex);
        }
        catch (FormatException ex)
        {
            // GnuTLS's words for a key that is not hex.
            throw new TlsException("Cannot set PSK client credentials: Error in parsing.", ex);
        }

        return new PskCredentials(id, endpoint, directory, verifyPeer, keyFile, username, key);
    }

    /// <summary>The key of <paramref name="username"/> in a <c>keys.psk</c>, in hex as written, or null when the user is not listed.</summary>
    /// <exception cref="TlsException">The file cannot be read.</exception>
    public static string? FindKey(string keyFile, string username)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(keyFile);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TlsException($"Cannot read PSK file {keyFile}: {ex.Message}", ex);
        }

        foreach (var line in lines)
        {
            if (line.Length > username.Length && line.StartsWith(username, StringComparison.Ordinal) && line[username.Length] == ':')
            {
                return line[(username.Length + 1)..].Trim();
            }
        }

        return null;
    }

    /// <summary>
    /// The key a connecting client claims with <paramref name="identity"/>: looked up in the file at every
    /// handshake, as GnuTLS does; null (the handshake fails) for an unknown user, an unreadable file or a bad key.
    /// </summary>
    internal byte[]? ServerKey(string identity)
    {
        try
        {
            return FindKey(_keyFile, identity) is { } hex ? Convert.FromHexString(hex) : null;
        }
        catch (Exception ex) when (ex is TlsException or FormatException)
        {
            return null;
        }
    }

    /// <summary>TLS 1.2 with pre-shared keys, through BouncyCastle (<see cref="NonBlockingTlsStream"/>): .NET's SslStream has none.</summary>
    public override ValueTask<Stream> AuthenticateAsServerAsync(Stream stream, CancellationToken cancellationToken)
    {
        var protocol = new Org.BouncyCastle.Tls.TlsServerProtocol();
        protocol.Accept(new PskPeers.Server(ServerKey));
        return NonBlockingTlsStream.HandshakeAsync(protocol, stream, cancellationToken);
    }

    public override ValueTask<Stream> AuthenticateAsClientAsync(Stream stream, string? hostname, CancellationToken cancellationToken)
    {
        // A pre-shared key proves both ends; there is no certificate to carry a host name.
        var protocol = new Org.BouncyCastle.Tls.TlsClientProtocol();
        protocol.Connect(new PskPeers.Client(Username!, ClientKey!));
        return NonBlockingTlsStream.HandshakeAsync(protocol, stream, cancellationToken);
    }
}
