using System.Net.Sockets;
using BlockMirror.Net.Tls;
using BlockMirror.TestKit;

namespace BlockMirror.Net.Tests;

public sealed class X509CredentialsTests
{
    [Fact]
    public async Task A_client_and_a_server_of_one_CA_talk_through_the_session()
    {
        using var dir = new TempDirectory("blockmirror-tls-");
        TlsCertificates.CreateX509(dir.Path);
        var server = X509Credentials.Load("s", TlsEndpoint.Server, dir.Path, verifyPeer: true, sanityCheck: true);
        var client = X509Credentials.Load("c", TlsEndpoint.Client, dir.Path, verifyPeer: true, sanityCheck: true);
        var (serverStream, clientStream) = await HandshakeAsync(server, client, "localhost");
        await using (serverStream)
        await using (clientStream)
        {
            await clientStream.WriteAsync("ping"u8.ToArray());
            await clientStream.FlushAsync();
            var buffer = new byte[4];
            await serverStream.ReadExactlyAsync(buffer);
            Assert.Equal("ping"u8.ToArray(), buffer);
        }
    }

    [Fact]
    public async Task A_server_that_verifies_peers_refuses_a_client_without_a_certificate_and_one_from_another_CA()
    {
        using var dir = new TempDirectory("blockmirror-tls-");
        var good = TlsCertificates.CreateX509(dir.File("good"));
        var other = TlsCertificates.CreateX509(dir.File("other"));
        var server = X509Credentials.Load("s", TlsEndpoint.Server, good, verifyPeer: true, sanityCheck: true);

        // No client certificate: only the CA.
        var bare = Directory.CreateDirectory(dir.File("bare")).FullName;
        File.Copy(Path.Combine(good, TlsCertificates.CaCert), Path.Combine(bare, TlsCertificates.CaCert));
        var anonymous = X509Credentials.Load("c", TlsEndpoint.Client, bare, verifyPeer: true, sanityCheck: true);
        var refused = await Assert.ThrowsAsync<TlsException>(() => HandshakeAsync(server, anonymous, "localhost"));
        Assert.Contains("No certificate peers", refused.Message);

        // A client certificate another CA signed (sanity-check off: it would refuse to load it).
        var stranger = Directory.CreateDirectory(dir.File("stranger")).FullName;
        File.Copy(Path.Combine(good, TlsCertificates.CaCert), Path.Combine(stranger, TlsCertificates.CaCert));
        File.Copy(Path.Combine(other, TlsCertificates.ClientCert), Path.Combine(stranger, TlsCertificates.ClientCert));
        File.Copy(Path.Combine(other, TlsCertificates.ClientKey), Path.Combine(stranger, TlsCertificates.ClientKey));
        var foreign = X509Credentials.Load("c", TlsEndpoint.Client, stranger, verifyPeer: true, sanityCheck: false);
        refused = await Assert.ThrowsAsync<TlsException>(() => HandshakeAsync(server, foreign, "localhost"));
        Assert.Contains("The certificate hasn't got a known issuer", refused.Message);

        // With verify-peer=off the same client is let in.
        var lenient = X509Credentials.Load("s2", TlsEndpoint.Server, good, verifyPeer: false, sanityCheck: true);
        var (a, b) = await HandshakeAsync(lenient, anonymous, "localhost");
        await a.DisposeAsync();
        await b.DisposeAsync();
    }

    [Fact]
    public async Task A_client_refuses_a_server_of_another_CA_and_a_server_named_otherwise()
    {
        using var dir = new TempDirectory("blockmirror-tls-");
        var good = TlsCertificates.CreateX509(dir.File("good"));
        var other = TlsCertificates.CreateX509(dir.File("other"));
        var client = X509Credentials.Load("c", TlsEndpoint.Client, good, verifyPeer: true, sanityCheck: true);
        var foreignServer = X509Credentials.Load("s", TlsEndpoint.Server, other, verifyPeer: false, sanityCheck: true);
        var refused = await Assert.ThrowsAsync<TlsException>(() => HandshakeAsync(foreignServer, client, "localhost"));
        Assert.Contains("The certificate hasn't got a known issuer", refused.Message);

        var server = X509Credentials.Load("s", TlsEndpoint.Server, good, verifyPeer: false, sanityCheck: true);
        refused = await Assert.ThrowsAsync<TlsException>(() => HandshakeAsync(server, client, "elsewhere.example"));
        Assert.Contains("Certificate does not match the hostname elsewhere.example", refused.Message);
    }

    [Fact]
    public void Loading_fails_in_QEMU_words_on_missing_files_and_an_expired_certificate()
    {
        using var dir = new TempDirectory("blockmirror-tls-");
        var missing = Assert.Throws<TlsException>(() => X509Credentials.Load("s", TlsEndpoint.Server, dir.Path, true, true));
        Assert.Equal($"Unable to access credentials {dir.File("ca-cert.pem")}: No such file or directory", missing.Message);

        TlsCertificates.CreateX509(dir.Path, serverExpired: true);
        var expired = Assert.Throws<TlsException>(() => X509Credentials.Load("s", TlsEndpoint.Server, dir.Path, true, true));
        Assert.Equal($"The server certificate {dir.File("server-cert.pem")} has expired", expired.Message);

        File.Delete(dir.File("server-key.pem"));
        missing = Assert.Throws<TlsException>(() => X509Credentials.Load("s", TlsEndpoint.Server, dir.Path, true, true));
        Assert.Equal($"Unable to access credentials {dir.File("server-key.pem")}: No such file or directory", missing.Message);
    }

    /// <summary>Both ends of one handshake over a connected socket pair; throws what either end threw.</summary>
    internal static async Task<(Stream Server, Stream Client)> HandshakeAsync(TlsCredentials server, TlsCredentials client, string? hostname)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        listener.Listen(1);
        var connecting = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await connecting.ConnectAsync(listener.LocalEndPoint!);
        var accepted = await listener.AcceptAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var serverSide = server.AuthenticateAsServerAsync(new NetworkStream(accepted, ownsSocket: true), timeout.Token).AsTask();
        var clientSide = client.AuthenticateAsClientAsync(new NetworkStream(connecting, ownsSocket: true), hostname, timeout.Token).AsTask();
        try
        {
            await Task.WhenAll(serverSide, clientSide);
        }
        catch
        {
            // The end that rejected the other says why; the other end only sees the connection drop.
            foreach (var side in new[] { serverSide, clientSide })
            {
                if (side.IsCompletedSuccessfully)
                {
                    await side.Result.DisposeAsync();
                }
            }

            var failures = new[] { serverSide, clientSide }.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
            throw failures.FirstOrDefault(f => f.Message.Contains("rejected", StringComparison.Ordinal)) ?? failures[0];
        }

        return (serverSide.Result, clientSide.Result);
    }
}
