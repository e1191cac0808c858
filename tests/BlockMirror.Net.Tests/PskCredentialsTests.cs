using BlockMirror.Net.Tls;
using BlockMirror.TestKit;

namespace BlockMirror.Net.Tests;

public sealed class PskCredentialsTests
{
    static readonly byte[] AliceKey = [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0, 0x01];

    [Fact]
    public async Task A_client_with_a_listed_key_talks_both_ways_through_the_session()
    {
        using var dir = new TempDirectory("blockmirror-psk-");
        TlsCertificates.CreatePsk(dir.Path, ("bob", [1, 2, 3, 4, 5, 6, 7, 8]), ("alice", AliceKey));
        var server = PskCredentials.Load("s", TlsEndpoint.Server, dir.Path, verifyPeer: true, username: null);
        var client = PskCredentials.Load("c", TlsEndpoint.Client, dir.Path, verifyPeer: true, username: "alice");
        var (serverStream, clientStream) = await X509CredentialsTests.HandshakeAsync(server, client, hostname: null);
        await using (serverStream)
        await using (clientStream)
        {
            // More than one record each way, and both directions at once.
            var up = new byte[100_000];
            var down = new byte[70_000];
            new Random(1).NextBytes(up);
            new Random(2).NextBytes(down);
            var sending = Task.WhenAll(clientStream.WriteAsync(up).AsTask(), serverStream.WriteAsync(down).AsTask());
            var received = new byte[up.Length];
            var back = new byte[down.Length];
            await Task.WhenAll(serverStream.ReadExactlyAsync(received).AsTask(), clientStream.ReadExactlyAsync(back).AsTask(), sending);
            Assert.Equal(up, received);
            Assert.Equal(down, back);
        }
    }

    [Fact]
    public async Task A_wrong_key_or_an_unknown_user_fails_the_handshake()
    {
        using var dir = new TempDirectory("blockmirror-psk-");
        using var other = new TempDirectory("blockmirror-psk-");
        TlsCertificates.CreatePsk(dir.Path, ("alice", AliceKey));
        TlsCertificates.CreatePsk(other.Path, ("alice", [9, 9, 9, 9, 9, 9, 9, 9]), ("carol", AliceKey));
        var server = PskCredentials.Load("s", TlsEndpoint.Server, dir.Path, verifyPeer: true, username: null);
        foreach (var user in new[] { "alice", "carol" })
        {
            var client = PskCredentials.Load("c", TlsEndpoint.Client, other.Path, verifyPeer: true, username: user);
            await Assert.ThrowsAsync<TlsException>(() => X509CredentialsTests.HandshakeAsync(server, client, hostname: null));
        }
    }

    [Fact]
    public void Loading_fails_in_QEMU_words()
    {
        using var dir = new TempDirectory("blockmirror-psk-");
        var missing = Assert.Throws<TlsException>(() => PskCredentials.Load("c", TlsEndpoint.Client, dir.Path, true, null));
        Assert.Equal($"Unable to access credentials {dir.File("keys.psk")}: No such file or directory", missing.Message);

        TlsCertificates.CreatePsk(dir.Path, ("alice", AliceKey));
        var unknown = Assert.Throws<TlsException>(() => PskCredentials.Load("c", TlsEndpoint.Client, dir.Path, true, null));
        Assert.Equal($"Username qemu not found in PSK file {dir.File("keys.psk")}", unknown.Message);

        var serverUser = Assert.Throws<TlsException>(() => PskCredentials.Load("s", TlsEndpoint.Server, dir.Path, true, "alice"));
        Assert.Equal("username should not be set when endpoint=server", serverUser.Message);

        File.WriteAllText(dir.File("keys.psk"), "qemu:zz\n");
        var bad = Assert.Throws<TlsException>(() => PskCredentials.Load("c", TlsEndpoint.Client, dir.Path, true, null));
        Assert.Equal("Cannot set PSK client credentials: Error in parsing.", bad.Message);
    }
}
