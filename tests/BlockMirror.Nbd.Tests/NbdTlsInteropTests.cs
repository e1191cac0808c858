using BlockMirror.Net.Tls;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>QEMU's and libnbd's clients against our NBD server with TLS (certificates from <see cref="TlsCertificates"/>).</summary>
public sealed class NbdTlsInteropTests
{
    const long Size = 4 << 20;

    static string[] ClientObject(string dir) => ["--object", $"tls-creds-x509,id=tls0,dir={dir},endpoint=client"];

    static string ImageOpts(NbdFixture nbd, string? tlsCreds = "tls0", string host = "localhost") =>
        $"driver=nbd,server.type=inet,server.host={host},server.port={nbd.Port},export={NbdFixture.ExportName}" +
        (tlsCreds is null ? "" : $",tls-creds={tlsCreds}");

    [SkippableFact]
    public async Task Qemu_io_with_tls_creds_writes_and_reads_back_through_the_session()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        var pki = nbd.Pki!;
        var output = await ExternalTool.RunCheckedAsync("qemu-io", [.. ClientObject(pki.Path), "--image-opts", ImageOpts(nbd),
            "-c", "write -P 0x5a 0 1M", "-c", "write -z 1M 1M", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0 1M 1M", "-c", "flush"]);
        Assert.DoesNotContain("Pattern verification failed", output, StringComparison.Ordinal);
        var bytes = await File.ReadAllBytesAsync(nbd.ImagePath);
        Assert.True(bytes.AsSpan(0, 1 << 20).IndexOfAnyExcept((byte)0x5a) < 0);
        Assert.Equal(1 << 20, bytes.Count(b => b != 0));
    }

    [SkippableFact]
    public async Task Qemu_img_info_with_tls_creds_sees_the_export_and_without_is_refused_in_QEMU_words()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        var pki = nbd.Pki!;
        var info = await ExternalTool.RunCheckedAsync("qemu-img", ["info", .. ClientObject(pki.Path), "--image-opts", ImageOpts(nbd)]);
        Assert.Contains($"virtual size: 4 MiB ({Size} bytes)", info, StringComparison.Ordinal);

        var plain = await ExternalTool.RunAsync("qemu-img", ["info", "--image-opts", ImageOpts(nbd, tlsCreds: null)]);
        Assert.NotEqual(0, plain.ExitCode);
        Assert.Contains("TLS negotiation required before option 7 (go)", plain.StandardError, StringComparison.Ordinal);
        Assert.Contains("server reported: Option 0x7 not permitted before TLS", plain.StandardError, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task Qemu_img_refuses_our_server_by_a_name_its_certificate_lacks()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        var pki = nbd.Pki!;
        // The certificate names localhost, 127.0.0.1 and ::1; QEMU checks the host name it connected to.
        var byAddress = await ExternalTool.RunCheckedAsync("qemu-img", ["info", .. ClientObject(pki.Path), "--image-opts", ImageOpts(nbd, host: "127.0.0.1")]);
        Assert.Contains("file format: nbd", byAddress, StringComparison.Ordinal);
        var misnamed = await ExternalTool.RunAsync("qemu-img", ["info", .. ClientObject(pki.Path), "--image-opts", ImageOpts(nbd) + ",tls-hostname=elsewhere.example"]);
        Assert.NotEqual(0, misnamed.ExitCode);
        Assert.Contains("Certificate does not match the hostname elsewhere.example", misnamed.StandardError, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task Our_server_with_verify_peer_refuses_QEMU_without_a_client_certificate_and_lets_it_in_with_verify_peer_off()
    {
        using var bare = new TempDirectory("blockmirror-nbd-tls-");
        await using (var nbd = await NbdFixture.StartX509Async(Size, verifyPeer: true))
        {
            var pki = nbd.Pki!;
            File.Copy(pki.File(TlsCertificates.CaCert), bare.File(TlsCertificates.CaCert));
            var refused = await ExternalTool.RunAsync("qemu-img", ["info", .. ClientObject(bare.Path), "--image-opts", ImageOpts(nbd)]);
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Empty(nbd.Server.UnexpectedErrors);
        }

        await using (var lenient = await NbdFixture.StartX509Async(Size, verifyPeer: false))
        {
            var pki2 = lenient.Pki!;
            File.Copy(pki2.File(TlsCertificates.CaCert), bare.File(TlsCertificates.CaCert), overwrite: true);
            var info = await ExternalTool.RunCheckedAsync("qemu-img", ["info", .. ClientObject(bare.Path), "--image-opts", ImageOpts(lenient)]);
            Assert.Contains("file format: nbd", info, StringComparison.Ordinal);
        }
    }

    [SkippableFact]
    public async Task Qemu_io_with_psk_credentials_writes_and_reads_back_and_a_wrong_key_is_refused()
    {
        using var keys = new TempDirectory("blockmirror-nbd-psk-");
        using var wrong = new TempDirectory("blockmirror-nbd-psk-");
        TlsCertificates.CreatePsk(keys.Path, ("alice", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        TlsCertificates.CreatePsk(wrong.Path, ("alice", [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]));
        var credentials = PskCredentials.Load("tls0", TlsEndpoint.Server, keys.Path, verifyPeer: true, username: null);
        await using var nbd = await NbdFixture.StartAsync(Size, tls: credentials);
        string[] client = ["--object", $"tls-creds-psk,id=tls0,dir={keys.Path},endpoint=client,username=alice"];
        var output = await ExternalTool.RunCheckedAsync("qemu-io", [.. client, "--image-opts", ImageOpts(nbd),
            "-c", "write -P 0x3c 0 1M", "-c", "read -P 0x3c 0 1M", "-c", "flush"]);
        Assert.DoesNotContain("Pattern verification failed", output, StringComparison.Ordinal);
        var bytes = await File.ReadAllBytesAsync(nbd.ImagePath);
        Assert.True(bytes.AsSpan(0, 1 << 20).IndexOfAnyExcept((byte)0x3c) < 0);

        var refused = await ExternalTool.RunAsync("qemu-img", ["info", "--object", $"tls-creds-psk,id=tls0,dir={wrong.Path},endpoint=client,username=alice",
            "--image-opts", ImageOpts(nbd)]);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Empty(nbd.Server.UnexpectedErrors);
    }

    [SkippableFact]
    public async Task Nbdinfo_reads_an_nbds_uri_with_the_certificates_directory()
    {
        await using var nbd = await NbdFixture.StartX509Async(Size);
        var pki = nbd.Pki!;
        var output = await ExternalTool.RunCheckedAsync("nbdinfo", $"nbds://localhost:{nbd.Port}/{NbdFixture.ExportName}?tls-certificates={pki.Path}");
        Assert.Contains("with TLS", output, StringComparison.Ordinal);
        Assert.Contains($"export-size: {Size}", output, StringComparison.Ordinal);

        // A plain nbd:// URI to the same server: refused.
        var plain = await ExternalTool.RunAsync("nbdinfo", [$"nbd://localhost:{nbd.Port}/{NbdFixture.ExportName}"]);
        Assert.NotEqual(0, plain.ExitCode);
    }
}
