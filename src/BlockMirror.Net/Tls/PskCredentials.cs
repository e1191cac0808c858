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
        var key = FindKey(keyFile, username) ?? throw new TlsException($"Username {username} not found in PSK file {keyFile}");
        return new PskCredentials(id, endpoint, directory, verifyPeer, keyFile, username, key);
    }

    /// <summary>The key of <paramref name="username"/> in a <c>keys.psk</c>, or null when the user is not listed.</summary>
    /// <exception cref="TlsException">The file cannot be read, or the key is not hex.</exception>
    public static byte[]? FindKey(string keyFile, string username)
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
                var hex = line[(username.Length + 1)..].Trim();
                try
                {
                    return Convert.FromHexString(hex);
                }
                catch (FormatException ex)
                {
                    throw new TlsException($"The key of user {username} in PSK file {keyFile} is not hexadecimal", ex);
                }
            }
        }

        return null;
    }

    /// <summary>The key a connecting client claims with <paramref name="identity"/>: looked up in the file at every handshake, as GnuTLS does.</summary>
    internal byte[]? ServerKey(string identity) => FindKey(_keyFile, identity);

    public override ValueTask<Stream> AuthenticateAsServerAsync(Stream stream, CancellationToken cancellationToken) =>
        throw Unsupported();

    public override ValueTask<Stream> AuthenticateAsClientAsync(Stream stream, string? hostname, CancellationToken cancellationToken) =>
        throw Unsupported();

    static TlsException Unsupported() => new("TLS with pre-shared keys (tls-creds-psk) is not supported: .NET's TLS has no PSK cipher suites");
}
