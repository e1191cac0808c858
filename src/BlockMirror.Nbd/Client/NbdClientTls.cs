using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Net.Tls;

namespace BlockMirror.Nbd.Client;

/// <summary>The client's <c>tls-creds</c>: client credentials from the graph's objects, as the handshake's TLS upgrade.</summary>
static class NbdClientTls
{
    /// <summary>
    /// The upgrade the handshake runs after NBD_OPT_STARTTLS, with the credentials named <paramref name="id"/>;
    /// <paramref name="hostname"/> (null: none) is the name the server's certificate must carry.
    /// </summary>
    /// <exception cref="BlockOpenException">No such credentials, or not a client's (QEMU's words).</exception>
    public static Func<Stream, CancellationToken, ValueTask<Stream>> Upgrade(BlockGraph graph, string id, string? hostname)
    {
        TlsCredentials credentials;
        try
        {
            credentials = TlsCredentials.Require(graph.Objects.Find(id), id, TlsEndpoint.Client);
        }
        catch (TlsException ex)
        {
            throw new BlockOpenException(ex.Message);
        }

        return Upgrade(credentials, hostname);
    }

    /// <summary>
    /// The upgrade with x509 client credentials loaded from <paramref name="directory"/> (an <c>nbds://</c> URI's),
    /// checked as <c>--object tls-creds-x509,endpoint=client,verify-peer=on</c> checks them.
    /// </summary>
    /// <exception cref="BlockOpenException">The directory lacks <c>ca-cert.pem</c>, or a file fails its checks.</exception>
    public static Func<Stream, CancellationToken, ValueTask<Stream>> Upgrade(string directory, string? hostname)
    {
        TlsCredentials credentials;
        try
        {
            credentials = X509Credentials.Load($"nbds:{directory}", TlsEndpoint.Client, directory, verifyPeer: true, sanityCheck: true);
        }
        catch (TlsException ex)
        {
            throw new BlockOpenException($"TLS certificates for nbds: {ex.Message}");
        }

        return Upgrade(credentials, hostname);
    }

    static Func<Stream, CancellationToken, ValueTask<Stream>> Upgrade(TlsCredentials credentials, string? hostname) =>
        async (stream, cancellationToken) =>
        {
            try
            {
                return await credentials.AuthenticateAsClientAsync(stream, hostname, cancellationToken).ConfigureAwait(false);
            }
            catch (TlsException ex)
            {
                throw new BlockOpenException(ex.Message, BlockErrno.EIO, ex);
            }
        };
}
