using System.Text;
using BlockMirror.Nbd.Protocol;
using BlockMirror.Net.Tls;
using BlockMirror.TestKit;
using static BlockMirror.Nbd.Tests.NbdBytes;

namespace BlockMirror.Nbd.Tests;

/// <summary>NBD_OPT_STARTTLS on our server, byte by byte, with QEMU's server's replies as the reference (nbd/server.c).</summary>
public sealed class NbdTlsHandshakeTests
{
    const long Size = 1 << 20;

    static byte[] GoData(string name) => [.. U32((uint)name.Length), .. Encoding.UTF8.GetBytes(name), .. U16(0)];

    [Fact]
    public async Task Before_TLS_every_option_gets_TLS_REQD_and_the_client_may_try_again_then_STARTTLS_serves_the_export()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        var pki = nbd.Pki!;
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        foreach (var (option, data) in new[] { (NbdOption.List, Array.Empty<byte>()), (NbdOption.Go, GoData(NbdFixture.ExportName)),
            (NbdOption.StructuredReply, []), (NbdOption.Info, GoData(NbdFixture.ExportName)), ((NbdOption)42, [1, 2, 3]) })
        {
            await client.SendOptionAsync(option, data);
            var (replyOption, reply, message) = await client.ReadOptionReplyAsync();
            Assert.Equal(option, replyOption);
            Assert.Equal(NbdOptionReply.ErrTlsRequired, reply);
            Assert.Equal($"Option 0x{(uint)option:x} not permitted before TLS", Encoding.UTF8.GetString(message));
        }

        await client.SendOptionAsync(NbdOption.StartTls, []);
        Assert.Equal(NbdOptionReply.Ack, (await client.ReadOptionReplyAsync()).Reply);
        await client.StartTlsAsync(X509Credentials.Load("c", TlsEndpoint.Client, pki.Path, verifyPeer: true, sanityCheck: true));

        // Over TLS: a second STARTTLS is invalid, and the handshake carries on to the export.
        await client.SendOptionAsync(NbdOption.StartTls, []);
        var (_, again, why) = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdOptionReply.ErrInvalid, again);
        Assert.Equal("TLS already enabled", Encoding.UTF8.GetString(why));
        var (size, _) = await client.GoAsync(NbdFixture.ExportName);
        Assert.Equal((ulong)Size, size);

        await client.SendRequestAsync(NbdCommand.Read, 0, 4096);
        var (error, _) = await client.ReadSimpleReplyAsync();
        Assert.Equal(0, (int)error);
        Assert.Equal(new byte[4096], await client.ReadAsync(4096));
    }

    [Fact]
    public async Task Before_TLS_EXPORT_NAME_closes_and_ABORT_gets_TLS_REQD_then_closes()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        await using (var client = await RawNbdClient.ConnectAsync(nbd.Port))
        {
            await client.SendOptionAsync(NbdOption.ExportName, Encoding.UTF8.GetBytes(NbdFixture.ExportName));
            Assert.True(await client.IsClosedByServerAsync());
        }

        await using (var client = await RawNbdClient.ConnectAsync(nbd.Port))
        {
            await client.SendOptionAsync(NbdOption.Abort, []);
            Assert.Equal(NbdOptionReply.ErrTlsRequired, (await client.ReadOptionReplyAsync()).Reply);
            Assert.True(await client.IsClosedByServerAsync());
        }
    }

    [Fact]
    public async Task STARTTLS_with_data_is_invalid_and_closes_the_connection()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.SendOptionAsync(NbdOption.StartTls, [0]);
        var (_, reply, message) = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdOptionReply.ErrInvalid, reply);
        Assert.Equal("option 'starttls' has unexpected length", Encoding.UTF8.GetString(message));
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task A_server_without_TLS_refuses_STARTTLS_by_policy_and_carries_on()
    {
        await using var nbd = await NbdFixture.StartAsync(Size);
        await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
        await client.SendOptionAsync(NbdOption.StartTls, []);
        var (_, reply, message) = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdOptionReply.ErrPolicy, reply);
        Assert.Equal("TLS not configured", Encoding.UTF8.GetString(message));
        var (size, _) = await client.GoAsync(NbdFixture.ExportName);
        Assert.Equal((ulong)Size, size);
    }

    [Fact]
    public async Task A_client_whose_certificate_another_CA_signed_is_closed_at_the_TLS_handshake()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        var pki = nbd.Pki!;
        using (var other = new TempDirectory("blockmirror-nbd-tls-"))
        {
            TlsCertificates.CreateX509(other.Path);
            // Trusts the server (its CA) but presents a certificate of another CA.
            File.Copy(pki.File(TlsCertificates.CaCert), other.File(TlsCertificates.CaCert), overwrite: true);
            var stranger = X509Credentials.Load("c", TlsEndpoint.Client, other.Path, verifyPeer: true, sanityCheck: false);
            await using var client = await RawNbdClient.ConnectAsync(nbd.Port);
            await client.SendOptionAsync(NbdOption.StartTls, []);
            Assert.Equal(NbdOptionReply.Ack, (await client.ReadOptionReplyAsync()).Reply);
            // TLS 1.3 finishes the client's side before the server judges its certificate: the refusal shows as
            // the connection closing, at the handshake or at the next read.
            try
            {
                await client.StartTlsAsync(stranger);
                await client.SendOptionAsync(NbdOption.Go, GoData(NbdFixture.ExportName));
                Assert.True(await client.IsClosedByServerAsync());
            }
            catch (Exception ex) when (ex is TlsException or IOException or System.Security.Authentication.AuthenticationException)
            {
            }

            Assert.Empty(nbd.Server.UnexpectedErrors);
        }
    }
}
